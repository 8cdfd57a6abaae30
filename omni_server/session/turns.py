"""Turn detection: a deterministic state machine from per-window VAD probabilities to turn events.

Owns when a user turn starts and stops. Input is one speech probability per ``window_samples``
window (Silero: 512 samples = 32 ms at 16 kHz) in stream order; output is ``SpeechStarted`` /
``SpeechStopped`` carrying sample indices counted from the start of the stream, so the caller can
cut audio (and pre-roll) exactly. Sans-I/O: no awaits, no clock, no sockets; must not import the
VAD model, torch, the engine or the transport.

Rules (Silero's own ``VADIterator`` semantics, plus a minimum speech length):

- *Start*: a window with ``prob >= threshold`` opens a candidate. The candidate survives windows with
  ``prob >= neg_threshold`` (hysteresis) and is dropped by one below it. Once it spans
  ``min_speech_ms`` it is confirmed and ``SpeechStarted`` reports the candidate's first sample; so a
  click shorter than ``min_speech_ms`` never starts a turn.
- *Stop*: while speaking, the first window with ``prob < neg_threshold`` opens a silence; a window
  with ``prob >= threshold`` cancels it, values in between keep it running. Once the silence spans
  ``min_silence_ms``, ``SpeechStopped`` reports the silence's first sample as the end of speech.
- *Pause*: a silence may be reported at two points before ``min_silence_ms`` ends it (each at the
  window nearest its duration: a moment, not a minimum), each a ``SpeechPaused`` saying the turn may
  be over. At ``speculate_pause_ms`` (``speculate``) the caller may start a reply speculatively; at
  ``pause_ms`` (``judge``) it may ask a semantic model, whose verdict ``end_turn`` turns into an end
  at once (rule ``"semantic"``). Two equal points are one event with both flags; a point not shorter
  than ``min_silence_ms`` is never reached. Each silence that reaches a point is one numbered pause
  (both its events carry the number), so a late answer about an earlier pause is told apart; speech
  before the silence window is over gives ``SpeechResumed`` for it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["SpeechPaused", "SpeechResumed", "SpeechStarted", "SpeechStopped", "TurnConfig", "TurnDetector", "TurnEvent"]

_HYSTERESIS = 0.15
_MIN_NEG_THRESHOLD = 0.01  # as silero's get_speech_timestamps: never demand prob < 0


@dataclass(frozen=True, slots=True)
class TurnConfig:
    """Turn-taking parameters; defaults follow OpenAI's ``server_vad`` and LiveKit's Silero setup.

    ``neg_threshold`` (``None``) becomes ``max(threshold - 0.15, 0.01)``, capped at ``threshold``.
    """

    threshold: float = 0.5
    neg_threshold: float | None = None
    min_speech_ms: float = 200.0
    min_silence_ms: float = 500.0
    pause_ms: float | None = None  # silence after which to judge whether the turn is over; None: never
    speculate_pause_ms: float | None = None  # silence after which to start a reply speculatively; None: never
    window_samples: int = 512
    sample_rate_hz: int = 16_000

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        neg = self.neg_threshold
        if neg is None:
            neg = min(max(self.threshold - _HYSTERESIS, _MIN_NEG_THRESHOLD), self.threshold)
            object.__setattr__(self, "neg_threshold", neg)
        if not 0.0 < neg <= self.threshold:
            raise ValueError(f"neg_threshold must be in (0, threshold={self.threshold}], got {neg}")
        durations = (self.min_speech_ms, self.min_silence_ms, self.pause_ms or 0, self.speculate_pause_ms or 0)
        if min(durations) < 0:
            raise ValueError(
                "min_speech_ms, min_silence_ms, pause_ms and speculate_pause_ms must be >= 0, "
                f"got {self.min_speech_ms}, {self.min_silence_ms}, {self.pause_ms} and {self.speculate_pause_ms}"
            )
        if self.window_samples <= 0 or self.sample_rate_hz <= 0:
            raise ValueError(
                f"window_samples and sample_rate_hz must be > 0, got {self.window_samples} and {self.sample_rate_hz}"
            )

    @property
    def min_speech_windows(self) -> int:
        """Windows a candidate must span to start a turn (at least 1)."""
        return max(1, self._windows_for(self.min_speech_ms))

    @property
    def min_silence_windows(self) -> int:
        """Windows of silence that end a turn (at least 1)."""
        return max(1, self._windows_for(self.min_silence_ms))

    @property
    def pause_windows(self) -> int | None:
        """Windows of silence before the pause to judge, or None when the silence window comes first."""
        return self._pause_windows_for(self.pause_ms)

    @property
    def speculate_pause_windows(self) -> int | None:
        """Windows of silence before the pause to speculate at, or None when the silence window comes first."""
        return self._pause_windows_for(self.speculate_pause_ms)

    def _pause_windows_for(self, pause_ms: float | None) -> int | None:
        if pause_ms is None:
            return None
        # A pause point is a moment, not a minimum: the nearest window (100 ms: 96, not 128; 200: 192).
        windows = max(1, round(pause_ms * self.sample_rate_hz / 1000.0 / self.window_samples))
        return windows if windows < self.min_silence_windows else None

    def _windows_for(self, duration_ms: float) -> int:
        samples = duration_ms * self.sample_rate_hz / 1000.0
        # Round up: "lasts at least min_*_ms"; the epsilon keeps exact multiples from rounding up again.
        return math.ceil(samples / self.window_samples - 1e-9)


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """A turn started; ``sample_index`` is the first sample of its first speech window."""

    sample_index: int


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    """A turn ended; ``sample_index`` is one past its last speech sample (the first silent one).

    ``rule`` says what ended it: ``"silence"`` (``min_silence_ms`` of it) or ``"semantic"`` (``end_turn``);
    ``decided_at`` is the stream position when it was decided."""

    sample_index: int
    speech_s: float
    rule: str = "silence"
    decided_at: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class SpeechPaused:
    """The speech has paused for ``speculate_pause_ms`` (``speculate``), ``pause_ms`` (``judge``) or both;
    ``sample_index`` is the silence's first sample."""

    sample_index: int
    pause: int  # this pause's number (see ``TurnDetector.end_turn``), the same at both points of a silence
    speculate: bool
    judge: bool


@dataclass(frozen=True, slots=True)
class SpeechResumed:
    """Speech came back after pause number ``pause``, before the silence window ended the turn."""

    sample_index: int
    pause: int


TurnEvent = SpeechStarted | SpeechStopped | SpeechPaused | SpeechResumed


class TurnDetector:
    """Feeds on VAD probabilities, emits ``SpeechStarted`` / ``SpeechStopped``. One per audio stream."""

    def __init__(self, config: TurnConfig | None = None) -> None:
        self.config = config if config is not None else TurnConfig()
        self._min_speech_windows = self.config.min_speech_windows
        self._min_silence_windows = self.config.min_silence_windows
        self._pause_windows = self.config.pause_windows
        self._speculate_windows = self.config.speculate_pause_windows
        self._pauses = 0  # pauses numbered over the detector's life, never reset
        assert self.config.neg_threshold is not None  # filled in by TurnConfig.__post_init__
        self._neg_threshold: float = self.config.neg_threshold
        self.reset()

    @property
    def speaking(self) -> bool:
        """True between a ``SpeechStarted`` and its ``SpeechStopped``."""
        return self._speaking

    @property
    def windows_seen(self) -> int:
        """Probabilities consumed since the start (or last reset)."""
        return self._window

    @property
    def samples_seen(self) -> int:
        """Stream position, in samples, after the last window consumed."""
        return self._window * self.config.window_samples

    def reset(self) -> None:
        """Forget any turn in progress and restart sample counting at 0."""
        self._window = 0  # index of the next window to consume
        self._speaking = False
        self._speech_start: int | None = None  # first window of the candidate or of the current turn
        self._silence_start: int | None = None  # first window of the running silence, while speaking
        self._paused = False  # the running silence has reached a pause point: it is pause number self._pauses

    def feed(self, probs: Iterable[float]) -> list[TurnEvent]:
        """Consume probabilities for the next windows, in order (a list or ``VadStream.feed``'s array)."""
        cfg = self.config
        events: list[TurnEvent] = []
        for raw in probs:
            prob = float(raw)
            if math.isnan(prob):
                raise ValueError(f"VAD probability is NaN at window {self._window}")
            k = self._window
            self._window += 1
            if not self._speaking:
                if self._speech_start is None:
                    if prob >= cfg.threshold:
                        self._speech_start = k
                elif prob < self._neg_threshold:
                    self._speech_start = None  # too short: a click, not a turn
                    continue
                if self._speech_start is not None and k + 1 - self._speech_start >= self._min_speech_windows:
                    self._speaking = True
                    events.append(SpeechStarted(self._speech_start * cfg.window_samples))
            else:
                if prob >= cfg.threshold:
                    if self._paused:
                        events.append(SpeechResumed(k * cfg.window_samples, self._pauses))
                    self._silence_start, self._paused = None, False
                elif prob < self._neg_threshold and self._silence_start is None:
                    self._silence_start = k
                if self._silence_start is None:
                    continue
                silent = k + 1 - self._silence_start
                if silent >= self._min_silence_windows:
                    events.append(self._stop("silence"))
                    continue
                speculate, judge = silent == self._speculate_windows, silent == self._pause_windows
                if not (speculate or judge):
                    continue
                if not self._paused:  # the silence's first pause point numbers it
                    self._pauses += 1
                    self._paused = True
                start = self._silence_start * cfg.window_samples
                events.append(SpeechPaused(start, self._pauses, speculate=speculate, judge=judge))
        return events

    def end_turn(self, pause: int) -> SpeechStopped | None:
        """End the turn now, if the speech is still in pause number ``pause`` (rule ``"semantic"``)."""
        if not (self._speaking and self._paused and pause == self._pauses):
            return None
        return self._stop("semantic")

    def _stop(self, rule: str) -> SpeechStopped:
        cfg = self.config
        assert self._speech_start is not None and self._silence_start is not None
        speech_windows = self._silence_start - self._speech_start
        stopped = SpeechStopped(
            self._silence_start * cfg.window_samples,
            speech_windows * cfg.window_samples / cfg.sample_rate_hz,
            rule,
            self.samples_seen,
        )
        self._speaking, self._paused = False, False
        self._speech_start = None
        self._silence_start = None
        return stopped
