"""Tests for omni_server.session.turns: turn start/stop from VAD probabilities, deterministically."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from omni_server.session.turns import (
    SpeechPaused,
    SpeechResumed,
    SpeechStarted,
    SpeechStopped,
    TurnConfig,
    TurnDetector,
    TurnEvent,
)

W = 512  # samples per window; 32 ms at 16 kHz
START_WINDOWS = 7  # ceil(200 ms / 32 ms)
STOP_WINDOWS = 16  # ceil(500 ms / 32 ms)


def _feed_one_by_one(detector: TurnDetector, probs: list[float]) -> list[tuple[int, TurnEvent]]:
    """Feed window by window; return (index of the window that caused it, event)."""
    out = []
    for k, p in enumerate(probs):
        out += [(k, e) for e in detector.feed([p])]
    return out


def test_defaults_and_derived_windows() -> None:
    """Defaults give a 0.35 release threshold, 7 windows to start and 16 to stop."""
    cfg = TurnConfig()
    assert cfg.threshold == 0.5 and cfg.neg_threshold == pytest.approx(0.35)
    assert (cfg.min_speech_windows, cfg.min_silence_windows) == (START_WINDOWS, STOP_WINDOWS)
    assert TurnConfig(threshold=0.1).neg_threshold == 0.01
    assert TurnConfig(min_speech_ms=64).min_speech_windows == 2  # exact multiple stays exact
    assert TurnConfig(min_speech_ms=0, min_silence_ms=0).min_silence_windows == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"threshold": 0.0},
        {"threshold": 1.5},
        {"threshold": float("nan")},
        {"threshold": 0.5, "neg_threshold": 0.6},
        {"neg_threshold": 0.0},
        {"min_speech_ms": -1},
        {"min_silence_ms": -1},
        {"pause_ms": -1},
        {"speculate_pause_ms": -1},
        {"window_samples": 0},
        {"sample_rate_hz": 0},
    ],
)
def test_config_rejects_invalid_values(kwargs: dict[str, float]) -> None:
    """Out-of-range thresholds, negative durations and non-positive sizes are refused."""
    with pytest.raises(ValueError):
        TurnConfig(**kwargs)  # type: ignore[arg-type]


def test_config_is_frozen() -> None:
    """A config cannot be changed after construction."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        TurnConfig().threshold = 0.9  # type: ignore[misc]


def test_silence_produces_no_events() -> None:
    """Low probabilities never start a turn."""
    detector = TurnDetector()
    assert detector.feed([0.01] * 500) == []
    assert not detector.speaking


def test_start_is_reported_at_first_speech_window_after_min_speech() -> None:
    """SpeechStarted fires on the 7th speech window and points back at the first one."""
    detector = TurnDetector()
    events = _feed_one_by_one(detector, [0.0] * 10 + [0.9] * 20)
    assert events == [(10 + START_WINDOWS - 1, SpeechStarted(10 * W))]
    assert detector.speaking


def test_stop_is_reported_after_min_silence() -> None:
    """SpeechStopped fires on the 16th silent window; it marks where silence began and the speech length."""
    detector = TurnDetector()
    probs = [0.0] * 10 + [0.9] * 50 + [0.05] * 40
    events = _feed_one_by_one(detector, probs)
    assert events[1] == (60 + STOP_WINDOWS - 1, SpeechStopped(60 * W, speech_s=50 * W / 16_000))
    assert len(events) == 2 and not detector.speaking


def test_short_clicks_are_ignored() -> None:
    """Bursts shorter than min_speech_ms, separated by silence, never start a turn."""
    detector = TurnDetector()
    click = [0.99] * (START_WINDOWS - 1) + [0.0] * 5
    assert detector.feed([0.0] * 5 + click * 10) == []


def test_hysteresis_keeps_a_candidate_alive() -> None:
    """During a candidate, values between neg_threshold and threshold count as speech; below drops it."""
    kept = TurnDetector().feed([0.9] + [0.4] * (START_WINDOWS - 1))
    assert kept == [SpeechStarted(0)]
    dropped = TurnDetector().feed([0.9] * 3 + [0.3] + [0.9] * (START_WINDOWS - 1))
    assert dropped == []


def test_hysteresis_does_not_start_silence() -> None:
    """While speaking, values between the thresholds do not end the turn."""
    detector = TurnDetector()
    assert detector.feed([0.9] * 10 + [0.4] * 100) == [SpeechStarted(0)]
    assert detector.speaking


def test_silence_timer_is_cancelled_only_by_real_speech() -> None:
    """A prob >= threshold restarts the silence count; one between the thresholds does not."""
    detector = TurnDetector()
    detector.feed([0.9] * 10)
    assert detector.feed([0.1] * 10 + [0.6]) == []  # 10 silent windows, then the 0.6 resets the count
    events = _feed_one_by_one(detector, [0.1] + [0.4] * (STOP_WINDOWS - 2) + [0.1] * 5)
    # Silence began at stream window 21 (this feed's first); the 0.4s did not interrupt it.
    assert events == [(STOP_WINDOWS - 1, SpeechStopped(21 * W, speech_s=21 * W / 16_000))]


def test_turn_with_pauses_between_words_stays_one_turn() -> None:
    """Pauses shorter than min_silence_ms inside speech do not split the turn."""
    word_and_gap = [0.9] * 10 + [0.05] * (STOP_WINDOWS - 2)
    events = TurnDetector().feed(word_and_gap * 5 + [0.0] * STOP_WINDOWS)
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped]


def test_several_turns_count_samples_from_stream_start() -> None:
    """Sample indices keep counting across turns."""
    turn = [0.9] * 20 + [0.0] * 30
    events = TurnDetector().feed([0.0] * 4 + turn * 3)
    starts = [e.sample_index for e in events if isinstance(e, SpeechStarted)]
    stops = [e.sample_index for e in events if isinstance(e, SpeechStopped)]
    assert starts == [(4 + 50 * i) * W for i in range(3)]
    assert stops == [(24 + 50 * i) * W for i in range(3)]


@pytest.mark.parametrize("seed", range(5))
def test_batching_does_not_change_events(seed: int) -> None:
    """Feeding probabilities in random batches gives the same events as one at a time."""
    rng = np.random.default_rng(seed)
    probs = np.repeat(rng.uniform(0, 1, 200), rng.integers(1, 25, 200)).tolist()
    one_by_one = [e for _, e in _feed_one_by_one(TurnDetector(), probs)]
    detector = TurnDetector()
    batched: list[TurnEvent] = []
    pos = 0
    while pos < len(probs):
        n = int(rng.integers(0, 40))
        batched += detector.feed(probs[pos : pos + n])
        pos += n
    assert batched == one_by_one
    assert len(one_by_one) >= 2


def test_min_speech_zero_starts_on_first_window() -> None:
    """With min_speech_ms=0 one speech window starts the turn."""
    assert TurnDetector(TurnConfig(min_speech_ms=0)).feed([0.0, 0.7]) == [SpeechStarted(W)]


def test_custom_window_and_rate() -> None:
    """Timing follows window_samples and sample_rate_hz (256-sample windows at 8 kHz: 32 ms)."""
    detector = TurnDetector(TurnConfig(window_samples=256, sample_rate_hz=8_000))
    events = detector.feed([0.9] * 10 + [0.0] * STOP_WINDOWS)
    assert events == [SpeechStarted(0), SpeechStopped(10 * 256, speech_s=0.32)]


def test_reset_forgets_turn_and_position() -> None:
    """reset ends any turn silently and restarts sample counting at zero."""
    detector = TurnDetector()
    detector.feed([0.0] * 3 + [0.9] * 10)
    detector.reset()
    assert not detector.speaking and detector.samples_seen == 0
    assert detector.feed([0.9] * START_WINDOWS) == [SpeechStarted(0)]


def test_rejects_nan_probability() -> None:
    """A NaN probability is a caller bug and raises."""
    with pytest.raises(ValueError, match="NaN"):
        TurnDetector().feed([0.5, float("nan")])


def test_accepts_numpy_probabilities() -> None:
    """A float32 array straight from VadStream.feed is accepted."""
    events = TurnDetector().feed(np.full(START_WINDOWS, 0.9, dtype=np.float32))
    assert events == [SpeechStarted(0)]


# ---- pauses and semantic ends -------------------------------------------------------------------

PAUSE_WINDOWS = 6  # 200 ms / 32 ms, to the nearest window
SPECULATE_WINDOWS = 3  # 100 ms / 32 ms, to the nearest window


def _paused_config() -> TurnConfig:
    return TurnConfig(pause_ms=200, min_silence_ms=800)


def test_a_pause_is_reported_before_the_silence_window_ends() -> None:
    """200 ms into a silence `SpeechPaused` names its first sample; the 800 ms window then ends the turn."""
    det = TurnDetector(_paused_config())
    probs = [0.9] * 10 + [0.0] * 30
    events = _feed_one_by_one(det, probs)
    assert events[1] == (10 + PAUSE_WINDOWS - 1, SpeechPaused(10 * W, pause=1, speculate=False, judge=True))
    k, stopped = events[2]
    assert isinstance(stopped, SpeechStopped) and stopped.rule == "silence" and k == 10 + 25 - 1  # ceil(800/32)
    assert stopped.decided_at == (k + 1) * W


def test_speech_after_a_pause_resumes_the_same_turn() -> None:
    """Speech inside the silence window gives `SpeechResumed` for that pause and no stop."""
    det = TurnDetector(_paused_config())
    events = det.feed([0.9] * 10 + [0.0] * 12 + [0.9] * 5)
    assert [type(e) for e in events] == [SpeechStarted, SpeechPaused, SpeechResumed]
    assert events[2] == SpeechResumed(22 * W, pause=1) and det.speaking


def test_end_turn_ends_only_the_pause_it_was_asked_about() -> None:
    """The semantic rule ends the turn in the pause it judged; a stale pause number changes nothing."""
    det = TurnDetector(_paused_config())
    det.feed([0.9] * 10 + [0.0] * 8 + [0.9] * 3 + [0.0] * 8)  # pause 1, speech again, pause 2
    assert det.end_turn(1) is None and det.speaking
    stopped = det.end_turn(2)
    assert stopped is not None and stopped.rule == "semantic" and stopped.sample_index == 21 * W
    assert stopped.decided_at == 29 * W and not det.speaking
    assert det.feed([0.0] * 30) == []  # the silence that follows ends nothing more


def test_the_speculation_pause_comes_before_the_judged_one() -> None:
    """100 ms into a silence the speculation's pause, 200 ms in the judge's: one pause, numbered once."""
    det = TurnDetector(TurnConfig(pause_ms=200, speculate_pause_ms=100, min_silence_ms=800))
    events = _feed_one_by_one(det, [0.9] * 10 + [0.0] * 10)
    assert events[1:] == [
        (10 + SPECULATE_WINDOWS - 1, SpeechPaused(10 * W, pause=1, speculate=True, judge=False)),
        (10 + PAUSE_WINDOWS - 1, SpeechPaused(10 * W, pause=1, speculate=False, judge=True)),
    ]
    stopped = det.end_turn(1)
    assert stopped is not None and stopped.rule == "semantic" and stopped.sample_index == 10 * W


def test_equal_pauses_are_one_event() -> None:
    """Speculation and judge at the same pause: a single `SpeechPaused` carrying both."""
    det = TurnDetector(TurnConfig(pause_ms=200, speculate_pause_ms=200, min_silence_ms=800))
    events = det.feed([0.9] * 10 + [0.0] * 20)
    assert events[1:] == [SpeechPaused(10 * W, pause=1, speculate=True, judge=True)]


def test_speech_between_the_two_pauses_resumes_the_first() -> None:
    """Speech after the speculation's pause, before the judge's: resumed, and the judge's never comes."""
    det = TurnDetector(TurnConfig(pause_ms=200, speculate_pause_ms=100, min_silence_ms=800))
    events = det.feed([0.9] * 10 + [0.0] * (SPECULATE_WINDOWS + 1) + [0.9] * 3)
    assert events[1:] == [
        SpeechPaused(10 * W, pause=1, speculate=True, judge=False),
        SpeechResumed((10 + SPECULATE_WINDOWS + 1) * W, pause=1),
    ]
    assert det.end_turn(1) is None and det.speaking
    later = det.feed([0.0] * PAUSE_WINDOWS)
    assert [(e.pause, e.speculate, e.judge) for e in later if isinstance(e, SpeechPaused)] == [
        (2, True, False),
        (2, False, True),
    ]


def test_no_pause_when_the_window_is_not_longer() -> None:
    """A pause point not shorter than the silence window is never reported: the window ends the turn first."""
    det = TurnDetector(TurnConfig(pause_ms=500, speculate_pause_ms=600, min_silence_ms=500))
    events = det.feed([0.9] * 10 + [0.0] * 20)
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped]
