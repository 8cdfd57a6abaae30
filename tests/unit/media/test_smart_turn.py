"""Tests for omni_server.media.smart_turn: Whisper features as the model was trained on, and its verdicts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from transformers import WhisperFeatureExtractor

from omni_server.media.smart_turn import INPUT_SAMPLES, SmartTurnModel, log_mel_features, shipped_model_path
from tests import speech

TRAILING_SILENCE_S = 0.2  # when the session asks: after this much silence


@pytest.fixture(scope="module")
def model() -> SmartTurnModel:
    return SmartTurnModel()


def _reference(audio: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """transformers' extractor on the audio as Smart Turn's authors prepare it: last 8 s, zeros in front."""
    audio = audio[-INPUT_SAMPLES:]
    padded = np.concatenate([np.zeros(INPUT_SAMPLES - len(audio), np.float32), audio])
    extractor = WhisperFeatureExtractor(chunk_length=8)
    features = extractor(
        padded,
        sampling_rate=16_000,
        padding="max_length",
        max_length=INPUT_SAMPLES,
        truncation=True,
        do_normalize=True,
        return_tensors="np",
    ).input_features[0]
    return np.asarray(features, dtype=np.float32)


@pytest.mark.parametrize("seconds", [0.3, 3.0, 8.0, 11.5])
def test_features_match_transformers_whisper_extractor(seconds: float) -> None:
    """Our numpy log-mel equals WhisperFeatureExtractor's (80 x 800), short clips padded, long ones cut to 8 s."""
    rng = np.random.default_rng(int(seconds * 10))
    t = np.arange(int(seconds * 16_000)) / 16_000
    audio = (0.2 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    ours = log_mel_features(audio)
    assert ours.shape == (80, 800) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, _reference(audio), atol=1e-4)


def test_features_refuse_stereo() -> None:
    """Two-channel input is refused with a clear error rather than silently flattened."""
    with pytest.raises(ValueError, match="1-D mono"):
        log_mel_features(np.zeros((2, 1600), np.float32))


def test_model_ships_in_the_pipecat_wheel() -> None:
    """The ONNX file is found inside the installed pipecat-ai wheel, without importing pipecat."""
    path = Path(shipped_model_path())
    assert path.name == "smart-turn-v3.2-cpu.onnx" and path.stat().st_size > 8_000_000


def test_silence_gives_a_probability(model: SmartTurnModel) -> None:
    """Any input, even all zeros, gives a probability in [0, 1]."""
    p = model.complete_probability(np.zeros(16_000, np.float32))
    assert 0.0 <= p <= 1.0


@pytest.mark.parametrize("language", ["en", "zh"])
def test_unfinished_and_finished_utterances(model: SmartTurnModel, speech_dir: Path, language: str) -> None:
    """A clause cut off mid-sentence sounds unfinished (p < 0.5); the same sentence completed sounds finished."""
    first, rest = speech.PAUSED[language]
    half = speech.load_f32(
        speech.make_paused_speech_wav((first,), speech_dir / f"smart-turn-half-{language}.wav", language=language)
    )
    whole = speech.load_f32(
        speech.make_paused_speech_wav((first, rest), speech_dir / f"smart-turn-whole-{language}.wav", language=language)
    )
    pad = int(0.5 * 16_000)  # make_paused_speech_wav's silence after the speech
    trailing = int(TRAILING_SILENCE_S * 16_000)
    assert model.complete_probability(half[: len(half) - pad + trailing]) < 0.5
    assert model.complete_probability(whole[: len(whole) - pad + trailing]) > 0.5
    # on one core (a crowded decision) it says the same
    for audio in (half[: len(half) - pad + trailing], whole[: len(whole) - pad + trailing]):
        assert model.complete_probability(audio, crowded=True) == pytest.approx(model.complete_probability(audio))
