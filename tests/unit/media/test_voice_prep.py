"""Reference preparation: speech is trimmed and normalised; silence, noise, clipping and short clips are refused."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from omni_server.media.vad import SileroVadModel
from omni_server.media.voice_prep import PEAK_LIMIT, VoiceRejected, prepare_reference

SR = 16_000


@pytest.fixture(scope="module")
def vad() -> SileroVadModel:
    return SileroVadModel()


@pytest.fixture(scope="module")
def speech(question: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """About 5 s of espeak speech: the fixture sentence twice."""
    return np.concatenate([question, question]).astype(np.float32)


def test_silence_is_trimmed_and_loudness_normalised(vad: SileroVadModel, speech: npt.NDArray[np.float32]) -> None:
    """Two seconds of silence either side are cut; a quiet take comes out at a normal level."""
    quiet = np.concatenate([np.zeros(2 * SR), speech * 0.05, np.zeros(2 * SR)]).astype(np.float32)
    prepared = prepare_reference(quiet, vad)
    assert prepared.duration_s < len(speech) / SR + 0.5
    assert prepared.source_s == pytest.approx(len(quiet) / SR)
    assert prepared.speech_s >= 3.0
    assert 0.3 < float(np.max(np.abs(prepared.samples))) <= PEAK_LIMIT + 1e-6


def test_long_speech_keeps_the_best_15_seconds(vad: SileroVadModel, speech: npt.NDArray[np.float32]) -> None:
    """Forty seconds of speech keep one window of at most 15 s."""
    long = np.tile(speech, 8)
    prepared = prepare_reference(long, vad)
    assert 10.0 < prepared.duration_s <= 15.0


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda s: np.zeros(5 * SR, np.float32), "silent"),
        (lambda s: np.clip(s * 30, -1, 1).astype(np.float32), "distorted"),
        (lambda s: s[: int(1.5 * SR)], "at least 3 s"),
        (lambda s: (np.random.default_rng(1).standard_normal(5 * SR) * 0.05).astype(np.float32), "No speech"),
        (lambda s: np.zeros(0, np.float32), "empty"),
    ],
)
def test_bad_references_are_refused_with_the_reason(
    vad: SileroVadModel, speech: npt.NDArray[np.float32], make: object, reason: str
) -> None:
    """Silence, clipping, too little speech, pure noise and nothing at all: each has its own message."""
    with pytest.raises(VoiceRejected, match=reason):
        prepare_reference(make(speech), vad)  # type: ignore[operator]
