"""A reference voice from raw speech: checked, trimmed to its speech, loudness-normalised.

MiniCPM-o clones the voice of whatever audio sits in its system prompt, and clones short or noisy
clips badly (5 to 15 s of clean speech works best), so every reference — uploaded, recorded, or sent
as PCM over the API — passes through `prepare_reference` before it is stored or used:

1. near-silent or clipped input is refused (each with its own plain-words reason);
2. silero-vad finds the speech; leading and trailing silence is trimmed (with a short margin);
3. less than `MIN_SPEECH_S` of speech is refused; more than `MAX_SPEECH_S` keeps the `KEEP_BEST_S`
   window with the most speech in it;
4. the speech is scaled to `TARGET_RMS_DBFS`, never past a peak of `PEAK_LIMIT`.

Synchronous and CPU-bound (about 0.3 ms of VAD per 32 ms of audio): callers run it in a thread.
Pure numpy plus the shared VAD model: must not import torch, sockets, asyncio or file I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from omni_server.media.errors import MediaError
from omni_server.media.vad import SAMPLE_RATE_HZ, WINDOW_SAMPLES, SileroVadModel, VadStream

__all__ = ["PreparedVoice", "VoiceRejected", "prepare_reference"]

MIN_SPEECH_S = 3.0
MAX_SPEECH_S = 30.0
KEEP_BEST_S = 15.0
SPEECH_PROB = 0.5
MARGIN_BEFORE_S = 0.15
MARGIN_AFTER_S = 0.25
SILENT_PEAK = 10 ** (-45 / 20)  # a peak below -45 dBFS is a muted or unplugged microphone
CLIP_LEVEL = 0.99
CLIP_FRACTION = 0.002  # more than 0.2 % of samples at full scale: the recording is distorted
TARGET_RMS_DBFS = -20.0
PEAK_LIMIT = 0.95

Samples = npt.NDArray[np.float32]


class VoiceRejected(MediaError):
    """The audio cannot serve as a voice; the message tells the person what to do instead."""

    kind = "voice"


@dataclass(frozen=True)
class PreparedVoice:
    samples: Samples  # 16 kHz mono float32, trimmed and normalised
    speech_s: float  # speech the VAD found in the kept clip
    source_s: float  # length of the audio before trimming

    @property
    def duration_s(self) -> float:
        return len(self.samples) / SAMPLE_RATE_HZ


def prepare_reference(samples: Samples, vad_model: SileroVadModel) -> PreparedVoice:
    """Check, trim and normalise 16 kHz mono float32 speech; raise `VoiceRejected` with the reason."""
    x = np.asarray(samples, dtype=np.float32).reshape(-1)
    if x.size == 0 or not np.isfinite(x).all():
        raise VoiceRejected("The recording is empty or damaged.")
    peak = float(np.max(np.abs(x)))
    if peak < SILENT_PEAK:
        raise VoiceRejected("The recording is silent. Check that the right microphone is on and not muted.")
    if np.count_nonzero(np.abs(x) >= CLIP_LEVEL) > CLIP_FRACTION * x.size:
        raise VoiceRejected(
            "The recording is distorted (too loud: it hits the top of the scale). Move back from the "
            "microphone or lower its volume, and try again."
        )
    # Judge speech on a level-matched copy, so that a quiet but clean recording is not mistaken for silence.
    probs = VadStream(vad_model).feed(x * min(0.5 / peak, 30.0))
    speech = probs >= SPEECH_PROB
    if not speech.any():
        raise VoiceRejected("No speech was found in the recording. Record yourself reading the sentence aloud.")
    start, end = _speech_span(speech, x.size)
    speech_windows = int(np.count_nonzero(speech[start // WINDOW_SAMPLES : -(-end // WINDOW_SAMPLES)]))
    speech_s = speech_windows * WINDOW_SAMPLES / SAMPLE_RATE_HZ
    if (end - start) / SAMPLE_RATE_HZ > MAX_SPEECH_S:
        start, end = _best_window(speech, x.size)
        speech_s = float(np.count_nonzero(speech[start // WINDOW_SAMPLES : end // WINDOW_SAMPLES])) * (
            WINDOW_SAMPLES / SAMPLE_RATE_HZ
        )
    if speech_s < MIN_SPEECH_S:
        raise VoiceRejected(
            f"Only {speech_s:.1f} s of speech was found; a voice needs at least {MIN_SPEECH_S:.0f} s "
            "(5 to 15 s works best). Record a longer sentence."
        )
    clip = x[start:end]
    return PreparedVoice(samples=_normalised(clip, speech, start), speech_s=speech_s, source_s=x.size / SAMPLE_RATE_HZ)


def _speech_span(speech: npt.NDArray[np.bool_], n: int) -> tuple[int, int]:
    """Sample range from the first to the last speech window, with a margin on each side."""
    hits = np.flatnonzero(speech)
    start = int(hits[0]) * WINDOW_SAMPLES - int(MARGIN_BEFORE_S * SAMPLE_RATE_HZ)
    end = (int(hits[-1]) + 1) * WINDOW_SAMPLES + int(MARGIN_AFTER_S * SAMPLE_RATE_HZ)
    return max(0, start), min(n, end)


def _best_window(speech: npt.NDArray[np.bool_], n: int) -> tuple[int, int]:
    """The `KEEP_BEST_S` window holding the most speech, trimmed to the speech inside it."""
    width = int(KEEP_BEST_S * SAMPLE_RATE_HZ) // WINDOW_SAMPLES
    counts = np.convolve(speech.astype(np.int32), np.ones(width, dtype=np.int32), mode="valid")
    first = int(np.argmax(counts))
    inside = np.zeros_like(speech)
    inside[first : first + width] = speech[first : first + width]
    start, end = _speech_span(inside, n)
    # The margins must not push the clip past the window: keep it within KEEP_BEST_S.
    return max(start, first * WINDOW_SAMPLES), min(end, (first + width) * WINDOW_SAMPLES)


def _normalised(clip: Samples, speech: npt.NDArray[np.bool_], offset: int) -> Samples:
    """Scale so the speech windows' RMS is `TARGET_RMS_DBFS`, capped so no peak passes `PEAK_LIMIT`."""
    mask = np.repeat(speech, WINDOW_SAMPLES)[offset : offset + clip.size]
    voiced = clip[: mask.size][mask] if mask.any() else clip
    rms = float(np.sqrt(np.mean(np.square(voiced, dtype=np.float64))))
    peak = float(np.max(np.abs(clip)))
    gain = min(10 ** (TARGET_RMS_DBFS / 20) / max(rms, 1e-9), PEAK_LIMIT / max(peak, 1e-9))
    return np.ascontiguousarray(clip * np.float32(gain), dtype=np.float32)
