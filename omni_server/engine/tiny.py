"""The tiny engine: a small random-weight torch model that honours MiniCPM-o 2.6's streaming contract.

Owns `TinyOmniModel`, its byte-level tokenizer and `build_tiny_engine`. Tests and machines without a GPU
run it in place of the real model, so everything above `engine/base.py` is exercised as with MiniCPM-o 2.6
(shared/research/minicpmo_api.md §1.2-1.6, §2.3-2.4; official_code_run.md §0, §4):

- real torch modules with seeded random weights: a transformers `Qwen2ForCausalLM` (hidden 64, 2 layers,
  4 heads, 2 KV heads) with a real KV cache kept as the legacy tuple in `llm_past_key_values`
  (`[0][0].shape[2]` = context length); an audio path (log-mel, 16 kHz, hop 160 → convs → one streaming
  attention layer whose cache is `audio_past_key_values` → 25 embeddings per second, 27 tokens with its
  tags); an image path (resize to 32×32, 4×4 patches → 64 embeddings, 66 tokens); a speech head that turns
  LLM hidden states into 25 codes per TTS step and every code into 512 samples of 24 kHz audio (±0.1).
- the real prompt strings, turn tags, validation, session reset, lazy generators, 3-token LLM chunks,
  held-back incomplete UTF-8, and the audio chunk pattern 10752, 2048, 12800…, 512·k samples.

Made-up parts, documented here because a test may meet them:
- *When a reply ends.* Random weights rarely sample an end token, so the LLM gets a deterministic bias:
  `<|tts_eos|>` scores `max(logits) + 0.25 · (n − 30)` after n generated tokens, and `<|im_end|>` always
  follows `<|tts_eos|>`. Replies end on their own after 26–40 tokens (median 34 over 40 turns), about
  100 codes or 2 s of speech; `max_new_tokens` cuts them shorter, `min_new_tokens` ≥ 3 never lets them end.
- *What the text looks like.* Sampling is masked to well-formed UTF-8: printable ASCII, Latin-1 letters
  (2 bytes) and CJK (3 bytes), so replies are readable noise whose characters span chunk boundaries.
- *How long the speech is.* One TTS step (25 codes, 0.533 s) runs each time 10 more text tokens exist;
  after the LLM ends, steps go on until the reply has 3 codes (64 ms) per text token, at least 8 codes.
- *Per-conversation randomness.* Sampling draws from `sampling_rng`, a `torch.Generator` seeded from the
  engine seed and the session id, so a conversation's output depends only on its own inputs. All
  per-conversation state lives in `STATE_ATTRS + ("sampling_rng", "last_prompt_text")`.

Not reproduced: image slicing (`max_slice_nums` > 1 still gives one 66-token image), TTS segments for
replies over ~120 TTS tokens, the TTS's audio EOS cutting the LLM short, the dropped "!" (token id 0),
number-to-words, beam search (`sampling=False` raises RuntimeError on first use, as the real code crashes).

Speed on the 2-core dev CPU (shared, so ±20%), cost "none", torch threads 1 / 2, by context length:

    context      1-s audio prefill   omni prefill (1 s + 640×480)   0.533 s of reply audio (~9 tokens)
    ~400 tokens  2.8 / 3.0 ms        4.7 / 5.0 ms                   10 / 11 ms
    ~1k tokens   4.0 / 4.1 ms        6.7 / 6.4 ms                   20 / 15 ms
    ~4k tokens   6.6 / 5.3 ms        13 / 10 ms                     24 / 18 ms
    ~8k tokens   12 / 8.3 ms         23 / 15 ms                     35 / 28 ms

Decoding grows with context because each token copies the legacy KV tuple (torch.cat) and repeats its
2 KV heads to 4 (transformers' repeat_kv); building an engine takes ~20 ms.

Must not import: sockets, websockets, aiortc, anything from `omni_server.session` or `.transport`.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from PIL import Image
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers  # type: ignore[import-untyped]
from torch import nn
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
from transformers.audio_utils import mel_filter_bank
from transformers.cache_utils import DynamicCache
from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode
from transformers.utils import ModelOutput

from omni_server.engine.base import (
    INPUT_SAMPLE_RATE_HZ,
    MIN_AUDIO_SAMPLES,
    OUTPUT_SAMPLE_RATE_HZ,
    Engine,
    EngineInfo,
    context_tokens,
    kv_bytes_per_token,
)
from omni_server.engine.cost import EngineCost
from omni_server.engine.prompts import sys_prompt

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = (
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<unk>", "<unit>", "</unit>", "<image>", "</image>",
    "<slice>", "</slice>", "<|audio_start|>", "<|audio|>", "<|audio_end|>", "<|spk_bos|>", "<|spk|>",
    "<|spk_eos|>", "<|tts_bos|>", "<|tts_eos|>", "<|listen|>", "<|speak|>", "<|interrupt|>",
    "<|vad_start|>", "<|vad_end|>", "<reserved_53>",
)  # fmt: skip
# Whole-word tokens, as in Qwen's vocabulary, so turn tags cost what they cost there ("<|im_start|>user\n" = 3).
_WORDS = ("user", "assistant", "system")
EXTRA_STATE_ATTRS = ("sampling_rng", "last_prompt_text")
GENERATE_PROMPT = "<|im_end|>\n<|im_start|>assistant\n<|spk_bos|><|spk|><|spk_eos|><|tts_bos|>"
_AUDIO_SLOT, _IMAGE_SLOT = "(<audio>./</audio>)", "(<image>./</image>)"
_SLOTS = re.compile(r"(\(<audio>\./</audio>\)|\(<image>\./</image>\))")
_SAMPLING = {"top_p": 0.8, "top_k": 100, "temperature": 0.7, "do_sample": True, "repetition_penalty": 1.05}
_BEAMS = {"num_beams": 3, "repetition_penalty": 1.2}

HIDDEN = 64
LLM_CHUNK_TOKENS = 3  # the real code calls llm.generate(max_new_tokens=3) per chunk
EOS_ONSET_TOKENS, EOS_SLOPE = 30, 0.25
IMAGE_TOKENS, IMAGE_SIDE, PATCH = 64, 32, 4
AUDIO_TOKENS_PER_S, HOP = 25, 160
ENCODER_POSITIONS = 1500  # the Whisper encoder's 30 s; the streaming cache resets beyond it
TTS_TEXT_TOKENS, TTS_STEP_CODES, SAMPLES_PER_CODE, CROSSFADE = 10, 25, 512, 2048
CODES_PER_TEXT_TOKEN, MIN_CODES, MAX_CODES, NUM_CODES = 3, 8, 2048, 626


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer built offline: 256 byte tokens, a few whole words, every special token."""
    byte_chars = bytes_to_unicode()
    vocab = {byte_chars[b]: b for b in range(256)}
    merges: list[tuple[str, str]] = []
    for word in _WORDS:
        for i in range(2, len(word) + 1):
            merges.append((word[: i - 1], word[i - 1]))
            vocab.setdefault(word[:i], len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in ("<|im_start|>", "<|im_end|>")],
        clean_up_tokenization_spaces=False,
    )


@dataclass
class OmniOutput(ModelOutput):  # type: ignore[misc]  # untyped base
    """One piece of a spoken reply, as the real model's `OmniOutput`: attributes and item access."""

    text: str | None = None
    spk_embeds: torch.Tensor | None = None
    audio_wav: torch.Tensor | None = None
    sampling_rate: int | None = None


def audio_token_count(n_samples: int) -> int:
    """`<unk>`s for `n_samples` of 16 kHz audio: the real processor's arithmetic (25 per second)."""
    frames = -(-n_samples // HOP)
    return ((frames - 1) // 2 + 1 - 2) // 2 + 1 if frames > 0 else 0


def audio_placeholder(n_samples: int) -> str:
    """The tokens an audio item becomes: per started second, `<|audio_start|>` + ≤25 `<unk>` + `<|audio_end|>`."""
    total, groups = audio_token_count(n_samples), []
    for start in range(0, total, AUDIO_TOKENS_PER_S):
        groups.append("<|audio_start|>" + "<unk>" * min(AUDIO_TOKENS_PER_S, total - start) + "<|audio_end|>")
    return "".join(groups)


IMAGE_PLACEHOLDER = "<image>" + "<unk>" * IMAGE_TOKENS + "</image>"


class _AudioEncoder(nn.Module):
    """Log-mel → two convs (50 frames/s) → attention over this turn's earlier frames → pool (25/s) → LLM width."""

    mel: torch.Tensor
    window: torch.Tensor

    def __init__(self, width: int = 64, heads: int = 2) -> None:
        super().__init__()
        fbank = mel_filter_bank(201, 80, 0.0, 8000.0, INPUT_SAMPLE_RATE_HZ, norm="slaney", mel_scale="slaney")
        self.register_buffer("mel", torch.from_numpy(fbank.T.astype(np.float32)), persistent=False)
        self.register_buffer("window", torch.hann_window(400), persistent=False)
        self.conv1 = nn.Conv1d(80, width, 3, padding=1)
        self.conv2 = nn.Conv1d(width, width, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.proj = nn.Sequential(nn.Linear(width, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN))
        self.heads = heads

    def forward(self, wav: torch.Tensor, past: Any) -> tuple[torch.Tensor, Any]:
        frames = -(-wav.shape[0] // HOP)
        padded = F.pad(wav, (0, frames * HOP - wav.shape[0]))
        spec = torch.stft(padded, 400, HOP, window=self.window, return_complex=True)
        logmel = (self.mel @ spec[:, :frames].abs().square()).clamp(min=1e-10).log10()
        logmel = (torch.maximum(logmel, logmel.max() - 8.0) + 4.0) / 4.0
        x = F.gelu(self.conv2(F.gelu(self.conv1(logmel[None])))).transpose(1, 2)  # (1, T, width)
        past_len = 0 if past is None else past[0][0].shape[2]
        if past_len + x.shape[1] > ENCODER_POSITIONS:
            logger.warning("audio encoder cache would pass %d positions: reset", ENCODER_POSITIONS)
            past, past_len = None, 0
        x = x + _sinusoids(past_len, x.shape[1], x.shape[2])
        q, k, v = (t.unflatten(2, (self.heads, -1)).transpose(1, 2) for t in self.qkv(self.norm(x)).chunk(3, 2))
        if past is not None:
            k, v = torch.cat([past[0][0], k], 2), torch.cat([past[0][1], v], 2)
        x = x + self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))
        pooled = F.avg_pool1d(x.transpose(1, 2), 2).transpose(1, 2)
        return self.proj(pooled[0]), ((k, v),)


def _sinusoids(start: int, length: int, width: int) -> torch.Tensor:
    pos = torch.arange(start, start + length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-np.log(10_000.0) / width))
    return torch.cat([torch.sin(pos * freq), torch.cos(pos * freq)], 1)


class _ImageEncoder(nn.Module):
    """A frame → 32×32 RGB → 64 patches of 4×4 → LLM width."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Linear(PATCH * PATCH * 3, HIDDEN)
        self.pos = nn.Parameter(torch.randn(IMAGE_TOKENS, HIDDEN) * 0.02)

    def forward(self, image: Image.Image) -> torch.Tensor:
        small = image.convert("RGB").resize((IMAGE_SIDE, IMAGE_SIDE), Image.Resampling.BILINEAR, reducing_gap=2.0)
        pixels = torch.from_numpy(np.asarray(small, dtype=np.float32) / 127.5 - 1.0)
        grid = IMAGE_SIDE // PATCH
        patches = pixels.reshape(grid, PATCH, grid, PATCH, 3).permute(0, 2, 1, 3, 4).reshape(IMAGE_TOKENS, -1)
        embeds: torch.Tensor = self.patch(patches) + self.pos
        return embeds


class _SpeechHead(nn.Module):
    """The TTS stand-in: an LLM hidden state → `k` audio codes (sampled) → 512 samples of 24 kHz audio per code."""

    def __init__(self) -> None:
        super().__init__()
        self.cond = nn.Linear(HIDDEN, NUM_CODES - 1)  # the last code id is the real TTS's audio EOS
        self.pos = nn.Parameter(torch.randn(TTS_STEP_CODES, NUM_CODES - 1))
        self.code_emb = nn.Embedding(NUM_CODES, 32)
        self.frame = nn.Linear(32, SAMPLES_PER_CODE)

    def codes(self, cond: torch.Tensor, k: int, rng: torch.Generator | None) -> torch.Tensor:
        probs = torch.softmax(self.cond(cond) + self.pos[:k], dim=-1)
        return torch.multinomial(probs, 1, generator=rng)[:, 0]

    def waveform(self, codes: torch.Tensor) -> torch.Tensor:
        return (torch.tanh(self.frame(self.code_emb(codes))) * 0.1).reshape(-1)


@dataclass
class _LlmChunk:
    """What one 3-token LLM step gives the reply generators."""

    text: str
    hidden_states: tuple[tuple[torch.Tensor, ...], ...] | None  # first chunk only, as the real model's
    speech_tokens: int  # text tokens before `<|tts_eos|>` (what the TTS speaks)
    last_hidden: torch.Tensor  # the newest token's last-layer state, conditions the speech head


@dataclass(frozen=True)
class _Sampling:
    """The real `generation_config` keys this model honours, and the logits warpers of `llm.generate`."""

    do_sample: bool
    temperature: float
    top_k: int
    top_p: float
    repetition_penalty: float
    min_new_tokens: int

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> _Sampling:
        return cls(
            do_sample=bool(config.get("do_sample", False)),
            temperature=float(config.get("temperature", 1.0)),
            top_k=int(config.get("top_k", 0)),
            top_p=float(config.get("top_p", 1.0)),
            repetition_penalty=float(config.get("repetition_penalty", 1.0)),
            min_new_tokens=int(config.get("min_new_tokens", 0)),
        )

    def pick(self, logits: torch.Tensor, context: list[int], rng: torch.Generator | None) -> int:
        """Repetition penalty over `context`, then greedy, or temperature, top-k, top-p and a draw from `rng`."""
        if self.repetition_penalty != 1.0:
            seen = torch.tensor(list(set(context)))
            scores = logits[seen]
            logits[seen] = torch.where(scores < 0, scores * self.repetition_penalty, scores / self.repetition_penalty)
        if not self.do_sample:
            return int(logits.argmax())
        values, order = torch.sort(logits / self.temperature, descending=True)
        if self.top_k > 0:
            values, order = values[: self.top_k], order[: self.top_k]
        probs = values.softmax(-1)
        if self.top_p < 1.0:  # keep the smallest head whose mass reaches top_p (transformers' TopPLogitsWarper)
            probs = probs * ((probs.cumsum(-1) - probs) < self.top_p)
        cumulative = probs.cumsum(-1)
        draw = torch.rand((), generator=rng) * cumulative[-1]
        return int(order[min(int(torch.searchsorted(cumulative, draw, right=True)), len(order) - 1)])


class TinyOmniModel(nn.Module):
    """MiniCPM-o 2.6's `OmniModel` interface on a tiny random model; one conversation at a time."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerFast, seed: int = 0, cost: EngineCost | None = None, faults: float = 0.0
    ) -> None:
        super().__init__()
        self.seed = seed
        self.faults = faults
        self.cost = cost if cost is not None else EngineCost()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            config = Qwen2Config(
                vocab_size=-(-len(tokenizer) // 64) * 64,
                hidden_size=HIDDEN,
                intermediate_size=2 * HIDDEN,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=32768,
                rope_theta=1e6,
                tie_word_embeddings=False,
                initializer_range=0.1,  # above the 0.02 default: the random LLM prefers some tokens to others
            )
            self.llm = Qwen2ForCausalLM(config)
            self.apm = _AudioEncoder()
            self.vpm = _ImageEncoder()
            self.tts = _SpeechHead()
        self.eval().requires_grad_(False)
        ids = {t: int(tokenizer.convert_tokens_to_ids(t)) for t in SPECIAL_TOKENS}
        self._ids = ids
        self._terminators = (ids["<|im_end|>"], ids["<|endoftext|>"])
        self._masks = _utf8_masks(config.vocab_size, ids["<|tts_eos|>"])
        self.reset_session()

    # --- the contract -------------------------------------------------------------------------------
    def reset_session(self) -> None:
        """Forget the conversation: exactly the real model's state attributes, plus ours."""
        self.session_id: str | None = None
        self.new_user_msg = True
        self.llm_generated = False
        self.llm_generate_completed = False
        self.llm_past_key_values: Any = None
        self.audio_past_key_values: Any = None
        self.sampling_rng: torch.Generator | None = None
        self.last_prompt_text: str | None = None  # the newest prefill's text before placeholders expand

    def init_tts(self, tts_text_tokenizer_path: str | None = None, vocos_ckpt_path: str | None = None) -> None:
        """Nothing to load: the speech head is built with the model (kept for parity with the real one)."""

    def get_sys_prompt(
        self, ref_audio: npt.NDArray[np.float32] | None = None, mode: str = "default", language: str = "zh"
    ) -> dict[str, Any]:
        """The real model's system turn for `mode` (see `prompts.sys_prompt`)."""
        return sys_prompt(ref_audio, mode, language)

    @torch.inference_mode()
    def streaming_prefill(
        self,
        session_id: str,
        msgs: list[dict[str, Any]],
        tokenizer: Any,
        omni_input: bool = True,
        max_slice_nums: int | None = None,
        ls_temperature: float = 1.0,
        **kwargs: Any,
    ) -> None:
        """Append one message to the conversation's KV cache; a new `session_id` starts a new conversation."""
        assert session_id is not None
        is_first = self.session_id is None or session_id != self.session_id
        assert len(msgs) == 1
        role = msgs[0]["role"]
        assert role in ("system", "user", "assistant")
        parts: list[str] = []
        images: list[Image.Image] = []
        audios: list[npt.NDArray[np.float32]] = []
        for item in msgs[0]["content"]:
            if isinstance(item, Image.Image):
                images.append(item)
                parts.append(_IMAGE_SLOT)
            elif isinstance(item, np.ndarray):
                audios.append(np.asarray(item, dtype=np.float32).reshape(-1))
                parts.append(_AUDIO_SLOT)
            elif isinstance(item, str):
                parts.append(item)
            else:
                logger.error("invalid content type %s: item dropped", type(item).__name__)
        contents = ("" if omni_input else "\n").join(parts)
        if not is_first and self.new_user_msg and role == "user":
            contents = self._turn_prefix() + contents
            self.new_user_msg = False
        if role in ("system", "assistant"):
            self.new_user_msg = True
            self.audio_past_key_values = None
        if is_first:
            logger.info("new session_id %s: reset kv cache", session_id)
            self.reset_session()
            self.session_id = session_id
            self.sampling_rng = _session_rng(self.seed, session_id)
            contents = f"<|im_start|>{role}\n{contents}<|im_end|>\n"
        self.last_prompt_text = contents
        embeds = self._embed_prompt(contents, images, audios, tokenizer)
        if is_first:
            self.audio_past_key_values = None
        if embeds.shape[1]:  # nothing to add for an empty message (e.g. a zero-length audio chunk)
            self._forward(embeds)
        self.cost.on_prefill(sum(len(a) for a in audios) / INPUT_SAMPLE_RATE_HZ, len(images))

    def streaming_generate(
        self,
        session_id: str,
        tokenizer: Any,
        max_new_tokens: int = 512,
        min_new_tokens: int = 0,
        sampling: bool = True,
        generate_audio: bool = True,
        enable_regenerate: bool = False,
        **kwargs: Any,
    ) -> Iterator[Any]:
        """Start a reply to the conversation so far; return a lazy generator (`session_id` is not checked).

        Yields `OmniOutput`s with 24 kHz speech, or `{"text": ...}` dicts when `generate_audio` is False.
        """
        config: dict[str, Any] = dict(_SAMPLING if sampling else _BEAMS, min_new_tokens=min_new_tokens)
        config.update((k, kwargs[k]) for k in config.keys() & kwargs.keys())
        self.new_user_msg = True
        self.llm_generated = True
        self.llm_generate_completed = False
        self.audio_past_key_values = None
        prompt_ids = tokenizer(GENERATE_PROMPT, add_special_tokens=False)["input_ids"]
        # Before any prefill this raises TypeError at the call, as the real model does.
        logger.debug("reply starts after %d context tokens", self.llm_past_key_values[0][0].shape[2])
        # The generators hold this conversation's cache and RNG, so that state swapped in later stays apart.
        rng = self.sampling_rng
        faults = random.Random(f"{self.seed}/{session_id}/{context_tokens(self)}") if self.faults else None
        llm = self._llm_chunks(prompt_ids, tokenizer, config, max_new_tokens, self.llm_past_key_values, rng, faults)
        return self._speech(llm, rng) if generate_audio else self._text(llm)

    # --- prefill internals --------------------------------------------------------------------------
    def _turn_prefix(self) -> str:
        if not self.llm_generated:
            return "<|im_start|>user\n"
        if self.llm_generate_completed:
            return "<|im_end|>\n<|im_start|>user\n"
        return "<|tts_eos|><|im_end|>\n<|im_start|>user\n"  # the reply was cut: max tokens or abandoned

    def _embed_prompt(
        self, text: str, images: list[Image.Image], audios: list[npt.NDArray[np.float32]], tokenizer: Any
    ) -> torch.Tensor:
        pieces = _SLOTS.split(text)
        if pieces.count(_AUDIO_SLOT) != len(audios) or pieces.count(_IMAGE_SLOT) != len(images):
            raise ValueError(f"prompt text holds {_AUDIO_SLOT} or {_IMAGE_SLOT} that match no input: remove them")
        lengths = iter(len(wav) for wav in audios)
        expanded = "".join(
            audio_placeholder(next(lengths)) if p == _AUDIO_SLOT else IMAGE_PLACEHOLDER if p == _IMAGE_SLOT else p
            for p in pieces
        )
        ids = torch.tensor(tokenizer(expanded, add_special_tokens=False)["input_ids"], dtype=torch.long)
        embeds: torch.Tensor = self.llm.get_input_embeddings()(ids)
        audio_parts = []
        for wav in audios:
            if 0 < len(wav) < MIN_AUDIO_SAMPLES:  # the real audio encoder's pooling fails the same way
                raise RuntimeError(
                    f"Given input size: ({HIDDEN}x1x1). Calculated output size: ({HIDDEN}x1x0). Output size is too small"
                )
            if audio_token_count(len(wav)):
                features, self.audio_past_key_values = self.apm(torch.from_numpy(wav), self.audio_past_key_values)
                audio_parts.append(features)
        self._fill(embeds, ids, "<|audio_start|>", "<|audio_end|>", audio_parts)
        self._fill(embeds, ids, "<image>", "</image>", [self.vpm(image) for image in images])
        return embeds[None]

    def _fill(self, embeds: torch.Tensor, ids: torch.Tensor, start: str, end: str, parts: list[torch.Tensor]) -> None:
        starts = (ids == self._ids[start]).nonzero()[:, 0].tolist()
        ends = (ids == self._ids[end]).nonzero()[:, 0].tolist()
        features = torch.cat(parts) if parts else embeds[:0]
        if len(starts) != len(ends) or sum(e - s - 1 for s, e in zip(starts, ends, strict=True)) != len(features):
            raise ValueError(f"prompt text holds {start}/{end} tokens that match no input: remove them")
        offset = 0
        for s, e in zip(starts, ends, strict=True):
            embeds[s + 1 : e] = features[offset : offset + e - s - 1]
            offset += e - s - 1

    def _forward(self, embeds: torch.Tensor, output_hidden_states: bool = False) -> Any:
        # The cache stays the legacy tuple the real model keeps; wrapping it ourselves avoids the
        # deprecation log a tuple would cause inside Qwen2Model.
        out = self.llm.model(
            inputs_embeds=embeds,
            past_key_values=DynamicCache.from_legacy_cache(self.llm_past_key_values),
            use_cache=True,
            output_hidden_states=output_hidden_states,
        )
        self.llm_past_key_values = out.past_key_values.to_legacy_cache()
        return out

    # --- generation internals -----------------------------------------------------------------------
    @torch.inference_mode()
    def _llm_chunks(
        self,
        prompt_ids: list[int],
        tokenizer: Any,
        config: dict[str, Any],
        max_new_tokens: int,
        cache: Any,
        rng: torch.Generator | None,
        faults: random.Random | None = None,
    ) -> Iterator[_LlmChunk]:
        if config.get("num_beams", 1) > 1:
            raise RuntimeError("beam search (sampling=False) crashes in MiniCPM-o 2.6 streaming; use sampling=True")
        sampling, tts_eos = _Sampling.from_config(config), self._ids["<|tts_eos|>"]
        expected_cache = cache  # the conversation's cache when the reply was asked for
        held: list[int] = []
        feed, new_len, utf8_need, speaking, first = prompt_ids, 0, 0, True, True
        while True:
            chunk_start_cache = self.llm_past_key_values
            chunk: list[int] = []
            context = list(feed)  # what repetition_penalty sees: this llm.generate call's input and output
            hidden: list[tuple[torch.Tensor, ...]] = []
            speech_tokens, eos = 0, False
            for step in range(LLM_CHUNK_TOKENS):
                if self.llm_past_key_values is not expected_cache:
                    raise RuntimeError("a streaming_generate generator was resumed after another prefill")
                out = self._forward(self.llm.get_input_embeddings()(torch.tensor([feed])), first)
                expected_cache = self.llm_past_key_values
                if first:
                    hidden.append(out.hidden_states)
                last_hidden = out.last_hidden_state[0, -1]
                logits = self.llm.lm_head(last_hidden).float()
                token = self._sample(logits, context, sampling, step, new_len + len(chunk), utf8_need, rng)
                chunk.append(token)
                context.append(token)
                utf8_need = _utf8_after(token, utf8_need)
                if token == tts_eos:
                    speaking = False
                elif speaking and token < 256:  # a byte: build_tiny_tokenizer gives byte b the id b
                    speech_tokens += 1
                if token in self._terminators:
                    eos = True
                    break
                feed = [token]
            if faults is not None and faults.random() < self.faults:
                # The real `_decode_text` fails on a chunk left empty, before the chunk's cache is kept.
                self.llm_past_key_values = chunk_start_cache
                raise IndexError("index 0 is out of bounds for dimension 0 with size 0")
            new_len += len(chunk)
            ids = held + chunk
            end = len(ids)
            while end and tokenizer.decode(ids[:end]).endswith("\ufffd"):
                end -= 1  # hold back an incomplete UTF-8 character, as the real model does
            held, ids = ids[end:], ids[:end]
            if ids and ids[-1] in self._terminators:
                ids = ids[:-1]
            text = tokenizer.decode(ids) if ids else ""
            yield _LlmChunk(text, tuple(hidden) if first else None, speech_tokens, last_hidden)
            first = False
            if eos:
                self.llm_generate_completed = True
                return
            if new_len >= max_new_tokens:
                return

    def _sample(
        self,
        logits: torch.Tensor,
        context: list[int],
        sampling: _Sampling,
        step: int,
        generated: int,
        utf8_need: int,
        rng: torch.Generator | None,
    ) -> int:
        # min_new_tokens applies per llm.generate call of 3 tokens, as in the real code.
        may_end = step >= sampling.min_new_tokens
        tts_eos = self._ids["<|tts_eos|>"]
        if context[-1] == tts_eos and may_end:
            return self._terminators[0]  # the reply's text is over: end the turn
        logits = logits + self._masks[min(utf8_need, 2)]
        if utf8_need == 0 and may_end:
            logits[tts_eos] = logits.max() + EOS_SLOPE * (generated - EOS_ONSET_TOKENS)
        else:
            logits[tts_eos] = -float("inf")
        return sampling.pick(logits, context, rng)

    @torch.inference_mode()
    def _text(self, llm: Iterator[_LlmChunk]) -> Iterator[dict[str, Any]]:
        for n, chunk in enumerate(llm):
            if n == 0:
                self.cost.on_first_chunk()
            self.cost.on_text_chunk()
            item: dict[str, Any] = {"text": chunk.text}
            if chunk.hidden_states is not None:
                item["hidden_states"] = chunk.hidden_states
            yield item

    @torch.inference_mode()
    def _speech(self, llm: Iterator[_LlmChunk], rng: torch.Generator | None) -> Iterator[OmniOutput]:
        text, speech_tokens, codes_done, steps = "", 0, 0, 0
        held: torch.Tensor | None = None  # audio decoded but not yet given out (the real code's prev_wav)
        cond = torch.zeros(HIDDEN)
        yields = 0

        def give(wav: torch.Tensor) -> OmniOutput:
            nonlocal text, yields
            if yields == 0:
                self.cost.on_first_chunk()
            self.cost.on_audio_chunk(len(wav) / OUTPUT_SAMPLE_RATE_HZ)
            out = OmniOutput(text=text, audio_wav=wav, sampling_rate=OUTPUT_SAMPLE_RATE_HZ)
            text, yields = "", yields + 1
            return out

        def tts_step(k: int) -> Iterator[OmniOutput]:
            nonlocal held, codes_done, steps
            wav = self.tts.waveform(self.tts.codes(cond, k, rng))
            codes_done, steps = codes_done + k, steps + 1
            if held is None:  # the first step keeps its last 2048 samples back for the cross-fade
                held = wav[-CROSSFADE:]
                yield give(wav[:-CROSSFADE])
            else:
                previous, held = held, wav
                yield give(previous)

        for chunk in llm:
            text += chunk.text.split("<|tts_eos|>")[0]
            speech_tokens += chunk.speech_tokens
            cond = chunk.last_hidden
            if speech_tokens >= (steps + 1) * TTS_TEXT_TOKENS:
                yield from tts_step(TTS_STEP_CODES)
        total = min(MAX_CODES, max(MIN_CODES, CODES_PER_TEXT_TOKEN * speech_tokens))
        while codes_done < total:
            yield from tts_step(min(TTS_STEP_CODES, total - codes_done))
        if held is not None:
            yield give(held)


def _utf8_masks(vocab_size: int, tts_eos: int) -> torch.Tensor:
    """Additive masks by pending continuation bytes (0, 1, 2): which tokens keep the text well-formed UTF-8."""
    masks = torch.full((3, vocab_size), -float("inf"))
    free = list(range(0x20, 0x7F)) + [0xC3] + list(range(0xE4, 0xEA))  # ASCII, Latin-1 letters, CJK leads
    masks[0, free] = 0.0
    masks[0, tts_eos] = 0.0
    masks[1:, 0x80:0xC0] = 0.0
    return masks


def _utf8_after(token: int, need: int) -> int:
    if 0x80 <= token < 0xC0:
        return max(need - 1, 0)
    if token == 0xC3:
        return 1
    if 0xE4 <= token < 0xEA:
        return 2
    return need


def _session_rng(seed: int, session_id: str) -> torch.Generator:
    """A sampling generator that depends only on the engine seed and the conversation's id."""
    digest = hashlib.sha256(f"{seed}\x00{session_id}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def build_tiny_engine(seed: int = 0, cost: EngineCost | None = None, faults: float = 0.0) -> Engine:
    """The tiny engine: seeded random weights, CPU, fp32; `cost` makes it as slow as the real model, and
    `faults` is the share of reply steps that fail as the real model's text decoding can (tests only)."""
    tokenizer = build_tiny_tokenizer()
    model = TinyOmniModel(tokenizer, seed=seed, cost=cost, faults=faults)
    info = EngineInfo(
        name="tiny",
        model="tiny-random",
        device="cpu",
        dtype="fp32",
        replies_are_noise=True,
        kv_bytes_per_token=kv_bytes_per_token(model.llm.config, element_bytes=4),
    )
    return Engine(model, tokenizer, info, extra_state_attrs=EXTRA_STATE_ATTRS)
