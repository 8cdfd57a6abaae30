"""How slow the tiny engine pretends to be: `EngineCost`, sleeps that stand in for the real model's compute.

The tiny engine answers in milliseconds; a server tested only against that never sees the real model's
latency (a second before the first audio, speech made at 0.6 of real time). `EngineCost` makes the tiny
model sleep, on the thread that calls it (the engine worker), as long as MiniCPM-o 2.6 would compute:

- `prefill_s_per_unit` per second of input audio and `prefill_s_per_frame` per image in a prefill;
- `first_chunk_s` once per reply, before its first output chunk (with speech: on top of the first TTS step);
- `audio_rtf` × the audio each TTS step decodes (25 codes = 12,800 samples = 0.533 s), before the chunk
  that step releases. The real model yields one step behind (10,752 samples, then the 2,048-sample
  cross-fade, then 12,800 per step, then the held-back rest at no cost), so its second chunk costs a whole
  step for 85 ms of audio: a listener who starts on the first chunk at once runs dry before the third;
- `text_chunk_s` per `{"text"}` dict when a reply is text only (`generate_audio=False`).

Presets (`EngineCost.parse`): `"none"` (no sleeps, the default) and `"minicpmo-2.6"`, from published
figures on an A100/4090 (OpenBMB/MiniCPM-V#858, #788; shared/research/minicpmo_api.md §1.6):
~1.5 s from the end of speech to the first audio, of which 0.5 s is the server's VAD silence window
(not the engine's), leaves ~1.0 s = last prefill 0.03 + `first_chunk_s` 0.65 + 0.6 × the first step's
0.533 s (0.32); TTS real-time factor ~0.6; ~0.16 s per 3-token text chunk without audio; a few tens of
ms to prefill one second of audio or one frame.

The sleep function is injected (`sleep=`), so tests record the sleeps instead of waiting.
Must not import torch, or anything from `omni_server.session` or `.transport`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class EngineCost:
    """Seconds of emulated compute per piece of work; all zero means "as fast as the tiny model is"."""

    prefill_s_per_unit: float = 0.0  # per second of input audio
    prefill_s_per_frame: float = 0.0  # per input image
    first_chunk_s: float = 0.0  # once per reply, before its first chunk
    audio_rtf: float = 0.0  # seconds of compute per second of speech a TTS step decodes
    text_chunk_s: float = 0.0  # per text-only chunk (3 tokens)
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)

    def __post_init__(self) -> None:
        for f in _KNOBS:
            value = getattr(self, f)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"engine cost {f} must be a finite number >= 0, not {value!r}")

    @classmethod
    def preset(cls, name: str, sleep: Callable[[float], None] = time.sleep) -> EngineCost:
        """The named preset (`"none"`, `"minicpmo-2.6"`)."""
        return cls(**_preset_knobs(name), sleep=sleep, clock=time.monotonic)

    @classmethod
    def parse(cls, text: str, sleep: Callable[[float], None] = time.sleep) -> EngineCost:
        """Parse a preset name, `key=value,...` overrides of "none", or a preset followed by overrides.

        Examples: `"minicpmo-2.6"`, `"prefill_s_per_unit=0.03,first_chunk_s=0.9,audio_rtf=0.6"`,
        `"minicpmo-2.6,audio_rtf=0.3"`. Raises ValueError naming what is wrong.
        """
        parts = [p.strip() for p in text.split(",")]
        if parts == [""]:
            raise ValueError("empty engine cost: give a preset name or key=value pairs")
        knobs = _preset_knobs("none")
        if "=" not in parts[0]:
            knobs, parts = _preset_knobs(parts[0]), parts[1:]
        for part in parts:
            key, sep, value = (p.strip() for p in part.partition("="))
            if not sep:
                raise ValueError(f"engine cost {part!r}: a preset name may only come first; expected key=value")
            if key not in _KNOBS:
                raise ValueError(f"unknown engine cost key {key!r}; known: {', '.join(_KNOBS)}")
            try:
                knobs[key] = float(value)
            except ValueError:
                raise ValueError(f"engine cost {key}={value!r} is not a number") from None
        return cls(**knobs, sleep=sleep, clock=time.monotonic)

    def with_sleep(self, sleep: Callable[[float], None], clock: Callable[[], float] | None = None) -> EngineCost:
        """The same costs, sleeping through `sleep` (and reading `clock`, when given)."""
        return dataclasses.replace(self, sleep=sleep, clock=clock or self.clock)

    @property
    def is_free(self) -> bool:
        """True when nothing ever sleeps."""
        return all(getattr(self, f) == 0 for f in _KNOBS)

    def on_prefill(self, audio_s: float, frames: int) -> None:
        """Sleep for a prefill of `audio_s` seconds of audio and `frames` images."""
        self._sleep(self.prefill_s_per_unit * audio_s + self.prefill_s_per_frame * frames)

    def on_first_chunk(self) -> None:
        """Sleep before the first chunk of a reply (one with speech: `on_tts_step(first=True)`)."""
        self._sleep(self.first_chunk_s)

    def on_tts_step(self, audio_s: float, since: float | None = None, *, first: bool = False) -> None:
        """Sleep for a TTS step that decodes `audio_s` seconds of speech (and, for a reply's `first` step,
        the model's time before its first chunk); the tiny model's own compute since `since` (`clock()`
        when the step's work began) counts toward it, so that on a slow or busy CPU a step takes the
        published time, not the published time plus the stand-in's."""
        spent = 0.0 if since is None else max(0.0, self.clock() - since)
        self._sleep((self.first_chunk_s if first else 0.0) + self.audio_rtf * audio_s - spent)

    def on_text_chunk(self) -> None:
        """Sleep before a text-only chunk."""
        self._sleep(self.text_chunk_s)

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.sleep(seconds)


_KNOBS = ("prefill_s_per_unit", "prefill_s_per_frame", "first_chunk_s", "audio_rtf", "text_chunk_s")

PRESETS: dict[str, dict[str, float]] = {
    "none": dict.fromkeys(_KNOBS, 0.0),
    "minicpmo-2.6": {
        "prefill_s_per_unit": 0.03,
        "prefill_s_per_frame": 0.03,
        "first_chunk_s": 0.65,
        "audio_rtf": 0.6,
        "text_chunk_s": 0.16,
    },
}


def _preset_knobs(name: str) -> dict[str, float]:
    try:
        return dict(PRESETS[name])
    except KeyError:
        raise ValueError(f"unknown engine cost preset {name!r}; known: {', '.join(PRESETS)}") from None
