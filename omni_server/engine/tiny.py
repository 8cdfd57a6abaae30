"""The tiny engine: a small random-weight torch model that honours MiniCPM-o 2.6's streaming contract.

Owns `TinyOmniModel` and `build_tiny_engine`; its tokenizer and sampling are in `tiny_text.py`, its
speech side in `tiny_speech.py`. Tests and machines without a GPU run it in place of the real model, so
everything above `engine/base.py` is exercised as with MiniCPM-o 2.6, failures and endings included
(shared/research/minicpmo_api.md §1.2-1.6, §2.3-2.4; official_code_run.md §0, §4; the real code was
run on a tiny random snapshot to check each point below):

- real torch modules with seeded random weights: a transformers `Qwen2ForCausalLM` (hidden 64, 2 layers,
  4 heads, 2 KV heads) with a real KV cache kept as the legacy tuple in `llm_past_key_values`
  (`[0][0].shape[2]` = context length); an audio path (log-mel, 16 kHz, hop 160 → convs → one streaming
  attention layer whose cache is `audio_past_key_values`, a `DynamicCache` updated in place within a user
  turn as the real encoder's is → 25 embeddings per second, 27 tokens with its tags); an image path
  (resize to 32×32, 4×4 patches → 64 embeddings, 66 tokens per overview or slice, images sliced as the
  real processor slices them when `max_slice_nums` > 1: `placeholders.py`); a speech head that turns
  LLM hidden states into 25 codes per TTS step, 512 samples of 24 kHz audio per code.
- the real prompt strings, turn tags, validation, session reset, lazy generators, 3-token LLM chunks,
  held-back incomplete UTF-8, the audio chunk pattern 10752, 2048, 12800…, 512·k, and TTS segments.
- the real failures: audio of 320 samples or fewer in a prefill raises the encoder's RuntimeError
  ("... Output size is too small"); token id 0 ("!") is dropped from decoded text, and a chunk left empty
  raises `_decode_text`'s IndexError before its cache is kept (`faults` raises it on purpose at a rate,
  for tests: `--engine-faults`); beam search (`sampling=False`) raises RuntimeError on first use.
- the real endings: the speech side usually samples its end first and cuts the text (tiny_speech.py), so
  the next turn usually gets the `<|tts_eos|><|im_end|>` prefix; speech goes on after the text ends.

Made-up parts, documented here because a test may meet them:
- *When the text ends.* Random weights rarely sample an end token, so the LLM gets a deterministic bias:
  `<|tts_eos|>` scores `max(logits) + 0.25 · (n − 45)` after n generated tokens, and `<|im_end|>` always
  follows `<|tts_eos|>`: the text would end after 41–55 tokens, but the speech side ends about two
  replies in three before that (40% per TTS step from the third; 27 of 40 turns; speech median 2.0 s,
  p95 3.1 s, at least 1.1 s). `max_new_tokens` cuts replies shorter; `min_new_tokens` ≥ 3 lets neither
  side end them early (benchmarks' long replies).
- *What the text looks like.* Sampling is masked to well-formed UTF-8: printable ASCII, Latin-1 letters
  (2 bytes) and CJK (3 bytes), plus, rarely (a logit offset of −1), any special token other than the
  turn tags and control characters, as a real reply may carry (about 4% and 2% of the text); "!" (id 0,
  which `_decode_text` drops) at an offset of −3, as rare as in real text, so that a chunk left empty
  fails a reply about as seldom as it would with MiniCPM-o.
- *How long the speech is.* After the text ends, steps go on until the segment has 3 codes (64 ms) per
  spoken text token, at least 8 codes.
- *Per-conversation randomness.* Sampling draws from `sampling_rng`, a `torch.Generator` seeded from the
  engine seed and the session id, so a conversation's output depends only on its own inputs. All
  per-conversation state lives in `STATE_ATTRS + ("sampling_rng", "last_prompt_text")`.

Not reproduced: number-to-words in the speech, `<|tts_eos|>` text leaking past its chunk.

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
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
from transformers.audio_utils import mel_filter_bank
from transformers.cache_utils import DynamicCache

from omni_server.engine.base import (
    INPUT_SAMPLE_RATE_HZ,
    MIN_AUDIO_SAMPLES,
    Engine,
    EngineInfo,
    context_tokens,
    kv_bytes_per_token,
)
from omni_server.engine.cost import EngineCost
from omni_server.engine.placeholders import (
    AUDIO_HOP,
    IMAGE_QUERY_TOKENS,
    audio_placeholder,
    audio_token_count,
    image_placeholder,
    slice_grid,
)
from omni_server.engine.prompts import GENERATE_PROMPT, sys_prompt, turn_prefix
from omni_server.engine.tiny_speech import HIDDEN, LlmChunk, OmniOutput, SpeechHead, speak
from omni_server.engine.tiny_text import (
    SPECIAL_TOKENS,
    TextSampling,
    build_tiny_tokenizer,
    byte_of,
    utf8_after,
    utf8_masks,
)

__all__ = ["SPECIAL_TOKENS", "OmniOutput", "TinyOmniModel", "build_tiny_engine", "build_tiny_tokenizer"]

logger = logging.getLogger(__name__)

EXTRA_STATE_ATTRS = ("sampling_rng", "last_prompt_text")
_AUDIO_SLOT, _IMAGE_SLOT = "(<audio>./</audio>)", "(<image>./</image>)"
_SLOTS = re.compile(r"(\(<audio>\./</audio>\)|\(<image>\./</image>\))")
_SAMPLING = {"top_p": 0.8, "top_k": 100, "temperature": 0.7, "do_sample": True, "repetition_penalty": 1.05}
_BEAMS = {"num_beams": 3, "repetition_penalty": 1.2}

LLM_CHUNK_TOKENS = 3  # the real code calls llm.generate(max_new_tokens=3) per chunk
EOS_ONSET_TOKENS, EOS_SLOPE = 45, 0.25
IMAGE_SIDE, PATCH = 32, 4
ENCODER_POSITIONS = 1500  # the Whisper encoder's 30 s; the streaming cache resets beyond it


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

    def forward(self, wav: torch.Tensor, past: DynamicCache | None) -> tuple[torch.Tensor, DynamicCache]:
        frames = -(-wav.shape[0] // AUDIO_HOP)
        padded = F.pad(wav, (0, frames * AUDIO_HOP - wav.shape[0]))
        spec = torch.stft(padded, 400, AUDIO_HOP, window=self.window, return_complex=True)
        logmel = (self.mel @ spec[:, :frames].abs().square()).clamp(min=1e-10).log10()
        logmel = (torch.maximum(logmel, logmel.max() - 8.0) + 4.0) / 4.0
        x = F.gelu(self.conv2(F.gelu(self.conv1(logmel[None])))).transpose(1, 2)  # (1, T, width)
        past_len = 0 if past is None else past.get_seq_length()
        if past is None or past_len + x.shape[1] > ENCODER_POSITIONS:
            if past is not None:
                logger.warning("audio encoder cache would pass %d positions: reset", ENCODER_POSITIONS)
            past, past_len = DynamicCache(), 0
        x = x + _sinusoids(past_len, x.shape[1], x.shape[2])
        q, k, v = (t.unflatten(2, (self.heads, -1)).transpose(1, 2) for t in self.qkv(self.norm(x)).chunk(3, 2))
        k, v = past.update(k, v, 0)  # in place, as the real streaming Whisper encoder's cache is updated
        x = x + self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))
        pooled = F.avg_pool1d(x.transpose(1, 2), 2).transpose(1, 2)
        return self.proj(pooled[0]), past


def _sinusoids(start: int, length: int, width: int) -> torch.Tensor:
    pos = torch.arange(start, start + length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-np.log(10_000.0) / width))
    return torch.cat([torch.sin(pos * freq), torch.cos(pos * freq)], 1)


class _ImageEncoder(nn.Module):
    """A frame → 32×32 RGB → 64 patches of 4×4 → LLM width."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Linear(PATCH * PATCH * 3, HIDDEN)
        self.pos = nn.Parameter(torch.randn(IMAGE_QUERY_TOKENS, HIDDEN) * 0.02)

    def forward(self, image: Image.Image) -> torch.Tensor:
        small = image.convert("RGB").resize((IMAGE_SIDE, IMAGE_SIDE), Image.Resampling.BILINEAR, reducing_gap=2.0)
        pixels = torch.from_numpy(np.asarray(small, dtype=np.float32) / 127.5 - 1.0)
        grid = IMAGE_SIDE // PATCH
        patches = pixels.reshape(grid, PATCH, grid, PATCH, 3).permute(0, 2, 1, 3, 4).reshape(IMAGE_QUERY_TOKENS, -1)
        embeds: torch.Tensor = self.patch(patches) + self.pos
        return embeds


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
            self.tts = SpeechHead()
        self.eval().requires_grad_(False)
        ids = {t: int(tokenizer.convert_tokens_to_ids(t)) for t in SPECIAL_TOKENS}
        self._ids = ids
        self._terminators = (ids["<|im_end|>"], ids["<|endoftext|>"])
        self._masks = utf8_masks(config.vocab_size, ids)
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
            contents = turn_prefix(self.llm_generated, self.llm_generate_completed) + contents
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
        embeds = self._embed_prompt(contents, images, audios, tokenizer, max_slice_nums)
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
        if not generate_audio:
            return self._text(llm)
        # A caller asking for a long reply (min_new_tokens ≥ 3, as benchmarks do) gets one: see tiny_speech.
        return speak(self.tts, llm, rng, self.cost, may_end_early=min_new_tokens < LLM_CHUNK_TOKENS)

    # --- prefill internals --------------------------------------------------------------------------

    def _embed_prompt(
        self,
        text: str,
        images: list[Image.Image],
        audios: list[npt.NDArray[np.float32]],
        tokenizer: Any,
        max_slice_nums: int | None,
    ) -> torch.Tensor:
        pieces = _SLOTS.split(text)
        if pieces.count(_AUDIO_SLOT) != len(audios) or pieces.count(_IMAGE_SLOT) != len(images):
            raise ValueError(f"prompt text holds {_AUDIO_SLOT} or {_IMAGE_SLOT} that match no input: remove them")
        lengths, sizes = iter(len(wav) for wav in audios), iter(image.size for image in images)
        expanded = "".join(
            audio_placeholder(next(lengths))
            if p == _AUDIO_SLOT
            else image_placeholder(*next(sizes), max_slice_nums)
            if p == _IMAGE_SLOT
            else p
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
        overviews, slices = [], []
        for image in images:
            overviews.append(self.vpm(image))
            slices += [self.vpm(piece) for piece in _slices(image, max_slice_nums)]
        self._fill(embeds, ids, "<image>", "</image>", overviews)
        self._fill(embeds, ids, "<slice>", "</slice>", slices)
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
    ) -> Iterator[LlmChunk]:
        if config.get("num_beams", 1) > 1:
            raise RuntimeError("beam search (sampling=False) crashes in MiniCPM-o 2.6 streaming; use sampling=True")
        sampling, tts_eos = TextSampling.from_config(config), self._ids["<|tts_eos|>"]
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
                utf8_need = utf8_after(token, utf8_need)
                if token == tts_eos:
                    speaking = False
                elif speaking and token != 0 and byte_of(token) is not None:  # a byte the TTS reads ("!" is dropped)
                    speech_tokens += 1
                if token in self._terminators:
                    eos = True
                    break
                feed = [token]
            fault = faults is not None and faults.random() < self.faults
            new_len += len(chunk)
            ids = held + chunk
            end = len(ids)
            while end and tokenizer.decode(ids[:end]).endswith("\ufffd"):
                end -= 1  # hold back an incomplete UTF-8 character, as the real model does
            held, ids = ids[end:], ids[:end]
            try:  # the real `_decode_text` fails on a chunk left empty, before the chunk's cache is kept
                if fault:  # --engine-faults: as if the chunk had been all "!" (id 0)
                    raise IndexError("index 0 is out of bounds for dimension 0 with size 0")
                text = self._decode(ids, tokenizer) if ids else ""
            except IndexError:
                self.llm_past_key_values = chunk_start_cache
                raise
            yield LlmChunk(text, tuple(hidden) if first else None, speech_tokens, last_hidden)
            first = False
            if eos:
                self.llm_generate_completed = True
                return
            if new_len >= max_new_tokens:
                return

    def _decode(self, ids: list[int], tokenizer: Any) -> str:
        """The real `_decode_text`: token id 0 ("!") dropped as padding, then a leading start token and a
        trailing terminator; a chunk left empty raises its IndexError (the cache of that chunk is not kept)."""
        kept = [i for i in ids if i != 0]
        if kept and kept[0] == self._ids["<|im_start|>"]:
            kept = kept[1:]
        if not kept:
            raise IndexError("index 0 is out of bounds for dimension 0 with size 0")
        if kept[-1] in self._terminators:
            kept = kept[:-1]
        return str(tokenizer.decode(kept))

    def _sample(
        self,
        logits: torch.Tensor,
        context: list[int],
        sampling: TextSampling,
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
    def _text(self, llm: Iterator[LlmChunk]) -> Iterator[dict[str, Any]]:
        for n, chunk in enumerate(llm):
            if n == 0:
                self.cost.on_first_chunk()
            self.cost.on_text_chunk()
            item: dict[str, Any] = {"text": chunk.text}
            if chunk.hidden_states is not None:
                item["hidden_states"] = chunk.hidden_states
            yield item


def _slices(image: Image.Image, max_slice_nums: int | None) -> list[Image.Image]:
    """The pieces the real processor cuts a large image into (row by row), or none (`placeholders.slice_grid`)."""
    grid = slice_grid(*image.size, max_slice_nums)
    if grid is None:
        return []
    cols, rows = grid
    width, height = image.size
    return [
        image.crop((c * width // cols, r * height // rows, (c + 1) * width // cols, (r + 1) * height // rows))
        for r in range(rows)
        for c in range(cols)
    ]


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
