"""The engine contract: what MiniCPM-o 2.6 offers for streaming, and what we build on it.

MiniCPM-o 2.6 (`MiniCPMO`, remote code) and our `TinyOmniModel` both satisfy `OmniModel`. Everything
above this module talks to an `Engine` (a model, its tokenizer and a description) through the
`EngineWorker`; nothing above it knows which model it is.

Facts of the contract (see shared/research/minicpmo_api.md, official_code_run.md):
- one conversation per model object; its streaming state lives in the attributes `STATE_ATTRS`;
- `streaming_prefill` returns None; a new `session_id` resets the KV cache;
- `streaming_generate` never checks `session_id` and returns a lazy generator of objects with `text`,
  `audio_wav` (1-D float32 CPU torch tensor at 24 kHz) and `sampling_rate`, or of `{"text": ...}` dicts;
- text may carry any special token and control characters (`Engine.clean_text` removes them);
- an abandoned generator must never be resumed after a new prefill.

Must not import: sockets, websockets, aiortc, anything from `omni_server.session` or `.transport`.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

INPUT_SAMPLE_RATE_HZ = 16_000
OUTPUT_SAMPLE_RATE_HZ = 24_000
# The shortest audio item a prefill takes: the audio encoder's pooling fails on 320 samples (20 ms) or
# fewer ("RuntimeError: ... Output size is too small"), observed on the real code.
MIN_AUDIO_SAMPLES = 321

# The model object's per-conversation streaming state (MiniCPMO.reset_session sets exactly these).
STATE_ATTRS: tuple[str, ...] = (
    "session_id",
    "new_user_msg",
    "llm_generated",
    "llm_generate_completed",
    "llm_past_key_values",
    "audio_past_key_values",
)

MODES = ("default", "omni", "audio_assistant", "audio_roleplay", "voice_cloning")
LANGUAGES = ("en", "zh")

# Control characters a reply may carry (random or confused sampling); tab and newline are text.
_CONTROL = "[\x00-\x08\x0b-\x1f\x7f-\x9f\ufffd]"


class OmniModel(Protocol):
    """MiniCPM-o 2.6's streaming interface, exactly as its remote code defines it."""

    session_id: str | None
    new_user_msg: bool
    llm_generated: bool
    llm_generate_completed: bool
    llm_past_key_values: Any
    audio_past_key_values: Any

    def reset_session(self) -> None: ...

    def get_sys_prompt(
        self, ref_audio: npt.NDArray[np.float32] | None = None, mode: str = "default", language: str = "zh"
    ) -> dict[str, Any]: ...

    def streaming_prefill(
        self,
        session_id: str,
        msgs: list[dict[str, Any]],
        tokenizer: Any,
        omni_input: bool = True,
        max_slice_nums: int | None = None,
        ls_temperature: float = 1.0,
        **kwargs: Any,
    ) -> None: ...

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
    ) -> Iterator[Any]: ...


@dataclass(frozen=True)
class EngineInfo:
    """What the server tells people about the engine it runs."""

    name: str  # "minicpm-o-2.6" or "tiny"
    model: str  # hub id or local path
    device: str
    dtype: str
    replies_are_noise: bool  # True for the tiny engine: random weights say nothing meaningful
    kv_bytes_per_token: int = 0  # LLM KV-cache growth per context token (admission's memory budget)

    def banner(self) -> str:
        text = f"engine {self.name} ({self.model}) on {self.device}/{self.dtype}"
        if self.replies_are_noise:
            text += ": random weights, replies are noise (for tests and machines without a GPU)"
        return text


@dataclass
class Engine:
    """A loaded model with its tokenizer. Owned by one `EngineWorker` thread once serving starts."""

    model: OmniModel
    tokenizer: Any
    info: EngineInfo
    # Extra per-conversation attributes this model keeps (the tiny engine's sampling generator).
    extra_state_attrs: tuple[str, ...] = field(default=())
    # Entered around every model call (the worker's): the real model's CUDA redirect on cpu/mps (devices.py).
    call_scope: Callable[[], AbstractContextManager[object]] = field(default=contextlib.nullcontext)

    @property
    def state_attrs(self) -> tuple[str, ...]:
        return STATE_ATTRS + self.extra_state_attrs

    @cached_property
    def clean_text(self) -> TextCleaner:
        """What turns the model's raw text into text for a user (built once from this tokenizer)."""
        return TextCleaner(self.tokenizer)


@dataclass(frozen=True)
class OutputChunk:
    """One piece of a reply as the model produced it: a text delta and 24 kHz speech (maybe empty)."""

    text: str
    audio: npt.NDArray[np.float32]

    @property
    def duration_s(self) -> float:
        return len(self.audio) / OUTPUT_SAMPLE_RATE_HZ


_EMPTY_AUDIO = np.zeros(0, dtype=np.float32)


def to_output_chunk(item: Any, clean_text: Callable[[str], str]) -> OutputChunk:
    """Normalise one item of `streaming_generate` (an `OmniOutput` or a `{"text"}` dict); `clean_text` its text."""
    if isinstance(item, dict):
        text, wav = item.get("text", ""), item.get("audio_wav")
    else:
        text, wav = getattr(item, "text", ""), getattr(item, "audio_wav", None)
    if wav is None:
        audio = _EMPTY_AUDIO
    else:
        # The real model gives a CPU torch tensor despite its type hint; accept arrays too.
        audio = np.asarray(wav.detach().cpu().numpy() if hasattr(wav, "detach") else wav, dtype=np.float32)
        audio = audio.reshape(-1)
    return OutputChunk(text=clean_text(text or ""), audio=audio)


class TextCleaner:
    """Removes from model text every special and added token its tokenizer knows, and control characters.

    The tokenizer is asked (`all_special_tokens`, `get_added_vocab()`), so tokens such as `<image_id>` or
    `<reserved_53>` go too, without a list kept here; whitespace-only added tokens are text and stay.
    """

    def __init__(self, tokenizer: Any) -> None:
        known = set(getattr(tokenizer, "all_special_tokens", ()))
        if hasattr(tokenizer, "get_added_vocab"):
            known |= set(tokenizer.get_added_vocab())
        tokens = sorted((t for t in known if t and not t.isspace()), key=len, reverse=True)
        self.tokens = tuple(tokens)
        self._pattern = re.compile("|".join([*map(re.escape, tokens), _CONTROL]))

    def __call__(self, text: str) -> str:
        return self._pattern.sub("", text)


def kv_bytes_per_token(config: Any, element_bytes: int) -> int:
    """Bytes a transformers LLM's KV cache grows by per token: a key and a value per layer and KV head."""
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return 2 * int(config.num_hidden_layers) * kv_heads * head_dim * element_bytes


def context_tokens(model: OmniModel) -> int:
    """Tokens in the conversation's LLM KV cache (0 before the first prefill)."""
    cache = model.llm_past_key_values
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    return int(cache[0][0].shape[2])
