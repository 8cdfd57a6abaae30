"""The null engine: MiniCPM-o 2.6's streaming contract with no model behind it, to measure everything else.

With the tiny engine, "how many calls does one gateway carry in real time" is answered by the tiny
model's own compute on the one engine thread (~25 calls on the 2-core dev box), not by the gateway.
`--engine null` keeps every part of the contract the server relies on and computes nothing:

- the conversation's state in exactly `STATE_ATTRS`, reset by a new `session_id`; the LLM cache a legacy
  tuple whose `[0][0].shape[2]` is the context length (empty tensors: no memory), grown by each prefill
  by the tokens the real model would add (text by the tiny tokenizer, audio and images by
  `placeholders`), and by each reply: its generation prompt, then 3 tokens per text chunk;
- the prompt turn tags by the same rules (`new_user_msg`, `llm_generated`, `llm_generate_completed`),
  so roll-over, rollback and usage see what they see with a model;
- the real failures a caller must survive: audio of 320 samples or fewer in a prefill, a reply before
  any prefill (TypeError at the call);
- replies as lazy generators: the real audio chunk pattern (10752, 2048, then 12800 per TTS step, then
  the held-back 2048) of a quiet noise, and a fixed English sentence in 3-word text chunks; a reply
  speaks 4 TTS steps (2.1 s), or, when `min_new_tokens` ≥ 3 asks for a long one, as many steps as
  `max_new_tokens` text tokens would take (3 codes of 21 ms per token);
- `EngineCost`, so `--engine null --engine-cost minicpmo-2.6` is the real model's pace with no compute.

What it does not do: look at its input. Everything it says is the same sentence.

Must not import: sockets, websockets, aiortc, anything from `omni_server.session` or `.transport`.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

from omni_server.engine.base import (
    INPUT_SAMPLE_RATE_HZ,
    MIN_AUDIO_SAMPLES,
    OUTPUT_SAMPLE_RATE_HZ,
    Engine,
    EngineInfo,
    context_tokens,
)
from omni_server.engine.cost import EngineCost
from omni_server.engine.placeholders import audio_tokens, image_tokens
from omni_server.engine.prompts import GENERATE_PROMPT, sys_prompt, turn_prefix
from omni_server.engine.tiny_speech import CROSSFADE, SAMPLES_PER_CODE, TTS_STEP_CODES, OmniOutput
from omni_server.engine.tiny_text import build_tiny_tokenizer

__all__ = ["NullOmniModel", "build_null_engine"]

logger = logging.getLogger(__name__)

SENTENCE = "Sure, I can hear you. This is the null engine, which says the same thing to everyone, at no cost."
REPLY_STEPS = 4  # TTS steps of an ordinary reply: 2.13 s of speech, about the tiny engine's median
CODES_PER_TOKEN = 3
_STEP = TTS_STEP_CODES * SAMPLES_PER_CODE  # 12,800 samples of speech per TTS step
_SLOTS = re.compile(r"\(<audio>\./</audio>\)|\(<image>\./</image>\)")
_NOISE = torch.from_numpy((np.random.default_rng(0).standard_normal(_STEP) * 0.05).astype(np.float32))


class NullOmniModel:
    """MiniCPM-o 2.6's `OmniModel` interface that keeps the bookkeeping and does no compute."""

    def __init__(self, tokenizer: Any, cost: EngineCost | None = None) -> None:
        self.cost = cost if cost is not None else EngineCost()
        self._prompt_tokens = _tokens(tokenizer, GENERATE_PROMPT)
        self.reset_session()

    def reset_session(self) -> None:
        """Forget the conversation: exactly the real model's state attributes."""
        self.session_id: str | None = None
        self.new_user_msg = True
        self.llm_generated = False
        self.llm_generate_completed = False
        self.llm_past_key_values: Any = None
        self.audio_past_key_values: Any = None

    def init_tts(self, tts_text_tokenizer_path: str | None = None, vocos_ckpt_path: str | None = None) -> None:
        """Nothing to load (kept for parity with the real model)."""

    def get_sys_prompt(
        self, ref_audio: npt.NDArray[np.float32] | None = None, mode: str = "default", language: str = "zh"
    ) -> dict[str, Any]:
        """The real model's system turn for `mode` (see `prompts.sys_prompt`)."""
        return sys_prompt(ref_audio, mode, language)

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
        """Count one message into the conversation; a new `session_id` starts a new conversation."""
        assert session_id is not None and len(msgs) == 1
        role = msgs[0]["role"]
        assert role in ("system", "user", "assistant")
        texts: list[str] = []
        tokens, audio_s, frames = 0, 0.0, 0
        for item in msgs[0]["content"]:
            if isinstance(item, Image.Image):
                tokens, frames = tokens + image_tokens(*item.size, max_slice_nums), frames + 1
            elif isinstance(item, np.ndarray):
                if 0 < item.size < MIN_AUDIO_SAMPLES:  # as the real audio encoder fails
                    raise RuntimeError(
                        "Given input size: (1x1x1). Calculated output size: (1x1x0). Output size is too small"
                    )
                tokens, audio_s = tokens + audio_tokens(item.size), audio_s + item.size / INPUT_SAMPLE_RATE_HZ
            elif isinstance(item, str):
                texts.append(_SLOTS.sub("", item))
        is_first = self.session_id is None or session_id != self.session_id
        text = "".join(texts)
        if not is_first and self.new_user_msg and role == "user":
            text = turn_prefix(self.llm_generated, self.llm_generate_completed) + text
            self.new_user_msg = False
        if role in ("system", "assistant"):
            self.new_user_msg = True
        if is_first:
            logger.info("new session_id %s: reset kv cache", session_id)
            self.reset_session()
            self.session_id = session_id
            text = f"<|im_start|>{role}\n{text}<|im_end|>\n"
        self.llm_past_key_values = _cache(context_tokens(self) + tokens + _tokens(tokenizer, text))
        self.cost.on_prefill(audio_s, frames)

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
        """Start a reply; return a lazy generator of `OmniOutput`s, or of `{"text"}` dicts without audio."""
        self.new_user_msg, self.llm_generated, self.llm_generate_completed = True, True, False
        self.audio_past_key_values = None
        start = self.llm_past_key_values[0][0].shape[2]  # before any prefill: TypeError at the call, as the real one
        words = SENTENCE.split(" ")
        long = min_new_tokens >= 3
        n_words = max_new_tokens if long else min(len(words), max_new_tokens)
        chunks = [" ".join(words[i % len(words)] for i in range(k, min(k + 3, n_words))) for k in range(0, n_words, 3)]
        chunks = [c if k == 0 else " " + c for k, c in enumerate(chunks)]
        if not generate_audio:
            return self._text(chunks, start)
        steps = max(2, math.ceil(n_words * CODES_PER_TOKEN / TTS_STEP_CODES)) if long else REPLY_STEPS
        return self._speech(chunks, steps, start)

    def _grow(self, start: int, chunks_done: int, total: int) -> None:
        """The cache after `chunks_done` text chunks; the text's end marks the reply complete."""
        self.llm_past_key_values = _cache(start + self._prompt_tokens + 3 * chunks_done)
        if chunks_done == total:
            self.llm_generate_completed = True

    def _text(self, chunks: list[str], start: int) -> Iterator[dict[str, Any]]:
        for n, chunk in enumerate(chunks):
            if n == 0:
                self.cost.on_first_chunk()
            self.cost.on_text_chunk()
            self._grow(start, n + 1, len(chunks))
            yield {"text": chunk}

    def _speech(self, chunks: list[str], steps: int, start: int) -> Iterator[OmniOutput]:
        """The real chunk pattern: a step's audio less the 2048 held back, that 2048, 12800 per step, the rest."""
        per_yield = -(-len(chunks) // steps)
        for step in range(steps):
            said = chunks[step * per_yield : (step + 1) * per_yield]
            self.cost.on_tts_step(_STEP / OUTPUT_SAMPLE_RATE_HZ, first=step == 0)
            self._grow(start, min(len(chunks), (step + 1) * per_yield), len(chunks))
            wav = _NOISE[:-CROSSFADE] if step == 0 else _NOISE[-CROSSFADE:] if step == 1 else _NOISE
            yield OmniOutput(text="".join(said), audio_wav=wav, sampling_rate=OUTPUT_SAMPLE_RATE_HZ)
        held = _NOISE[-CROSSFADE:] if steps == 1 else _NOISE  # the last step's audio, held back for a cross-fade
        yield OmniOutput(text="", audio_wav=held, sampling_rate=OUTPUT_SAMPLE_RATE_HZ)


def _tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0


def _cache(length: int) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """A legacy KV tuple of one layer whose sequence axis is `length` long and holds nothing."""
    empty = torch.empty((1, 1, length, 0))
    return ((empty, empty),)


def build_null_engine(cost: EngineCost | None = None) -> Engine:
    """The null engine (tiny tokenizer, no model): for measuring the server without a model's compute."""
    tokenizer = build_tiny_tokenizer()
    info = EngineInfo(
        name="null", model="none", device="cpu", dtype="none", replies_are_noise=True, kv_bytes_per_token=0
    )
    return Engine(NullOmniModel(tokenizer, cost), tokenizer, info)
