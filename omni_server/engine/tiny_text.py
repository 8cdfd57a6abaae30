"""The tiny engine's text side: its byte-level tokenizer, and how its random LLM's tokens are sampled.

Owns `build_tiny_tokenizer` and `TextSampling` for `tiny.py`. The tokenizer is byte-level like
Qwen2's: the 256 byte tokens come in GPT-2's order, so **id 0 is "!"** (which the real decoder drops,
official_code_run.md §4.9), then a few whole words, then every special token MiniCPM-o 2.6's vocabulary
has that its code or its text can show (`<unit>`, `<|tts_eos|>`, `<image_id>`, `<reserved_53>`, ...).

Sampling follows `llm.generate`'s warpers (repetition penalty, temperature, top-k, top-p) under masks
that keep the text well-formed UTF-8 (printable ASCII, Latin-1 letters, CJK), and let through, rarely,
what a real reply may also carry: any special token and control characters.

Must not import: sockets, websockets, aiortc, anything from `omni_server.session` or `.transport`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers  # type: ignore[import-untyped]
from transformers import PreTrainedTokenizerFast
from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

# MiniCPM-o 2.6's special tokens (its vocabulary has more `<reserved_NN>`; these are the ones its code uses).
SPECIAL_TOKENS = (
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<unk>", "<unit>", "</unit>", "<image>", "</image>",
    "<slice>", "</slice>", "<image_id>", "</image_id>", "<ref>", "</ref>", "<box>", "</box>", "<quad>",
    "</quad>", "<point>", "</point>", "<asr>", "</asr>", "<query>", "</query>", "<|audio_start|>",
    "<|audio|>", "<|audio_end|>", "<|spk_bos|>", "<|spk|>", "<|spk_eos|>", "<|tts_bos|>", "<|tts_eos|>",
    "<|listen|>", "<|speak|>", "<|interrupt|>", "<|vad_start|>", "<|vad_end|>", "<reserved_43>", "<reserved_53>",
)  # fmt: skip
# Whole-word tokens, as in Qwen's vocabulary, so turn tags cost what they cost there ("<|im_start|>user\n" = 3).
_WORDS = ("user", "assistant", "system")
# Bytes in GPT-2's (and Qwen2's) order: the printable ones first, so byte 0x21 "!" has id 0.
BYTE_OF_ID: tuple[int, ...] = tuple(bytes_to_unicode())
ID_OF_BYTE: tuple[int, ...] = tuple(sorted(range(256), key=lambda i: BYTE_OF_ID[i]))
# How much rarer than ordinary text a special token or a control character is (a logit offset).
RARE_LOGIT = -1.0
# "!" (id 0) as rare as in real text: `_decode_text` drops id 0, and a chunk left empty fails its reply. At
# the random model's own rate long replies failed ~1 in 100 (a "!" before a held-back character), far more
# often than MiniCPM-o's; `--engine-faults` makes that failure on purpose.
BANG_LOGIT = -3.0
_NO_SAMPLING = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|tts_eos|>")  # structure: handled apart


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer built offline: 256 byte tokens, a few whole words, every special token."""
    byte_chars = bytes_to_unicode()
    vocab = {byte_chars[BYTE_OF_ID[i]]: i for i in range(256)}
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


def byte_of(token: int) -> int | None:
    """The byte a token id stands for, or None for a word or special token."""
    return BYTE_OF_ID[token] if token < 256 else None


def utf8_masks(vocab_size: int, ids: dict[str, int]) -> torch.Tensor:
    """Additive masks by pending continuation bytes (0, 1, 2): which tokens keep the text well-formed UTF-8.

    With nothing pending: printable ASCII, Latin-1 and CJK lead bytes, `<|tts_eos|>` (biased apart), and
    at `RARE_LOGIT` special tokens and control characters; inside a character only its continuation bytes.
    """
    masks = torch.full((3, vocab_size), -float("inf"))
    free = list(range(0x20, 0x7F)) + [0xC3] + list(range(0xE4, 0xEA))  # ASCII, Latin-1 letters, CJK leads
    masks[0, [ID_OF_BYTE[b] for b in free]] = 0.0
    masks[0, ids["<|tts_eos|>"]] = 0.0
    rare = [ID_OF_BYTE[b] for b in (*range(0x01, 0x20), 0x7F)]
    rare += [i for token, i in ids.items() if token not in _NO_SAMPLING]
    masks[0, rare] = RARE_LOGIT
    masks[0, ID_OF_BYTE[0x21]] = BANG_LOGIT
    masks[1:, [ID_OF_BYTE[b] for b in range(0x80, 0xC0)]] = 0.0
    return masks


def utf8_after(token: int, need: int) -> int:
    """Continuation bytes still pending after `token`, given `need` pending before it."""
    b = byte_of(token)
    if b is None:
        return need
    if 0x80 <= b < 0xC0:
        return max(need - 1, 0)
    if b == 0xC3:
        return 1
    if 0xE4 <= b < 0xEA:
        return 2
    return need


@dataclass(frozen=True)
class TextSampling:
    """The real `generation_config` keys this model honours, and the logits warpers of `llm.generate`."""

    do_sample: bool
    temperature: float
    top_k: int
    top_p: float
    repetition_penalty: float
    min_new_tokens: int

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TextSampling:
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
