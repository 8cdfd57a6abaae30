"""Tests for omni_server.media.vad: Silero probabilities per 512-sample window, per-stream state."""

from __future__ import annotations

import shutil
import subprocess
import sys
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from omni_server.media.pcm import s16_to_f32
from omni_server.media.resample import resample
from omni_server.media.vad import (
    SAMPLE_RATE_HZ,
    WINDOW_SAMPLES,
    SileroVadModel,
    VadStream,
    shipped_model_path,
)

SENTENCE = "Hello there. This is a test of the voice activity detector. Can you hear me?"
PAD_S = 1.0


@pytest.fixture(scope="module")
def model() -> SileroVadModel:
    return SileroVadModel()


def _speech_like(seconds: float, seed: int) -> npt.NDArray[np.float32]:
    """Voiced, vowel-like audio: harmonics of a wavering 120 Hz pitch shaped by changing formants."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE_HZ)
    t = np.arange(n) / SAMPLE_RATE_HZ
    f0 = 120 + 15 * np.sin(2 * np.pi * 0.5 * t) + 8 * np.sin(2 * np.pi * 3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE_HZ
    vowels = np.array([(730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480)])
    syllable = SAMPLE_RATE_HZ // 4
    formants = np.repeat(vowels[rng.integers(len(vowels), size=n // syllable + 1)], syllable, axis=0)[:n]
    out: npt.NDArray[np.float64] = np.zeros(n)
    for h in range(1, 30):
        gain = sum(1.0 / (1.0 + ((h * f0 - formants[:, k]) / 90.0) ** 2) for k in range(3))
        out += gain * np.sin(h * phase) / np.sqrt(h)
    out *= np.sin(np.pi * t * 4) ** 2  # four syllables a second
    scaled: npt.NDArray[np.float32] = (0.3 * out / np.abs(out).max()).astype(np.float32)
    return scaled


def _padded(speech: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    pad = np.zeros(int(PAD_S * SAMPLE_RATE_HZ), dtype=np.float32)
    return np.concatenate([pad, speech, pad])


@pytest.fixture(scope="module")
def espeak_speech(tmp_path_factory: pytest.TempPathFactory) -> npt.NDArray[np.float32]:
    """Real synthetic speech from espeak-ng at 16 kHz, padded with a second of silence each side."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        pytest.skip("espeak-ng is not installed")
    path = tmp_path_factory.mktemp("vad") / "speech.wav"
    subprocess.run([exe, "-v", "en-us", "-s", "130", "-w", str(path), SENTENCE], check=True, timeout=30)
    with wave.open(str(path)) as wav:
        assert wav.getnchannels() == 1 and wav.getsampwidth() == 2
        rate_hz = wav.getframerate()
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.int16)
    return _padded(resample(s16_to_f32(pcm), rate_hz, SAMPLE_RATE_HZ))


def _feed_in_pieces(stream: VadStream, x: npt.NDArray[np.float32], seed: int) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    probs = []
    pos = 0
    while pos < x.size:
        n = int(rng.integers(0, 3 * WINDOW_SAMPLES))
        probs.append(stream.feed(x[pos : pos + n]))
        pos += n
    return np.concatenate(probs)


def _windows(seconds: float) -> int:
    return int(seconds * SAMPLE_RATE_HZ) // WINDOW_SAMPLES


def test_importing_vad_leaves_torch_and_silero_alone() -> None:
    """Importing and loading our VAD imports neither silero_vad (it pins torch to 1 thread) nor torch."""
    code = (
        "import sys\n"
        "from omni_server.media.vad import SileroVadModel\n"
        "SileroVadModel().stream().feed([0.0] * 512)\n"
        "assert 'silero_vad' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=Path(__file__).parents[3])


def test_shipped_model_is_found() -> None:
    """The ONNX file comes from the installed silero-vad wheel."""
    path = Path(shipped_model_path())
    assert path.name == "silero_vad.onnx" and path.is_file()


def test_one_probability_per_complete_window(model: SileroVadModel) -> None:
    """feed returns a probability for each full 512-sample window and buffers the rest."""
    stream = model.stream()
    assert stream.feed(np.zeros(1000, dtype=np.float32)).shape == (1,)
    assert stream.pending_samples == 1000 - WINDOW_SAMPLES
    assert stream.feed(np.zeros(23, dtype=np.float32)).shape == (0,)
    probs = stream.feed(np.zeros(1 + 2 * WINDOW_SAMPLES, dtype=np.float32))
    assert probs.shape == (3,) and probs.dtype == np.float32
    assert stream.pending_samples == 0 and stream.windows_processed == 4
    assert stream.feed(np.zeros(0, dtype=np.float32)).shape == (0,)


def test_silence_and_faint_noise_are_not_speech(model: SileroVadModel) -> None:
    """Digital silence and -60 dBFS noise stay far below any speech threshold."""
    noise = np.random.default_rng(0).normal(0, 1e-3, 2 * SAMPLE_RATE_HZ).astype(np.float32)
    probs = model.stream().feed(np.concatenate([np.zeros(SAMPLE_RATE_HZ, dtype=np.float32), noise]))
    assert probs.max() < 0.1


def test_speech_like_signal_is_detected(model: SileroVadModel) -> None:
    """Voiced, vowel-like audio scores high while the silence around it scores low."""
    probs = model.stream().feed(_padded(_speech_like(3.0, seed=0)))
    lead, body = _windows(PAD_S), _windows(PAD_S + 3.0)
    assert probs[:lead].max() < 0.1
    assert np.median(probs[lead + 3 : body]) > 0.5
    assert probs[-5:].max() < 0.1


def test_real_speech_is_detected(model: SileroVadModel, espeak_speech: npt.NDArray[np.float32]) -> None:
    """espeak-ng speech gets confident speech probabilities, its silent padding does not."""
    probs = model.stream().feed(espeak_speech)
    lead = _windows(PAD_S)
    speech = probs[lead : -lead - 1]
    assert probs[: lead - 1].max() < 0.1 and probs[-lead + 4 :].max() < 0.1
    assert speech.max() > 0.99
    assert (speech > 0.5).mean() > 0.6


def test_chunking_does_not_change_probabilities(model: SileroVadModel) -> None:
    """Random piece sizes give exactly the probabilities of one big feed."""
    x = _padded(_speech_like(2.0, seed=1))
    whole = model.stream().feed(x)
    np.testing.assert_array_equal(_feed_in_pieces(model.stream(), x, seed=2), whole)


def test_interleaved_streams_do_not_disturb_each_other(model: SileroVadModel) -> None:
    """Two streams fed alternately over one model give the same probabilities as each run alone."""
    a = _padded(_speech_like(2.0, seed=3))
    b = np.random.default_rng(4).normal(0, 0.05, a.size).astype(np.float32)
    alone_a, alone_b = model.stream().feed(a), model.stream().feed(b)
    sa, sb = model.stream(), model.stream()
    got_a, got_b = [], []
    for pos in range(0, a.size, 700):
        got_a.append(sa.feed(a[pos : pos + 700]))
        got_b.append(sb.feed(b[pos : pos + 700]))
    np.testing.assert_array_equal(np.concatenate(got_a), alone_a)
    np.testing.assert_array_equal(np.concatenate(got_b), alone_b)
    assert not np.allclose(alone_a, alone_b, atol=0.05)


def test_reset_behaves_like_a_new_stream(model: SileroVadModel) -> None:
    """After reset the stream forgets state, context and buffered samples."""
    x = _speech_like(1.0, seed=5)
    stream = model.stream()
    stream.feed(_speech_like(1.0, seed=6)[:1000])
    stream.reset()
    assert stream.pending_samples == 0 and stream.windows_processed == 0
    np.testing.assert_array_equal(stream.feed(x), model.stream().feed(x))


def test_rejects_multichannel(model: SileroVadModel) -> None:
    """Only mono (1-D) audio is accepted."""
    with pytest.raises(ValueError, match="1-D"):
        model.stream().feed(np.zeros((512, 2), dtype=np.float32))


@pytest.fixture(scope="module")
def silero_reference() -> Iterator[Any]:
    """silero's own OnnxWrapper; the import pins torch to one thread, so the count is restored after."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    try:
        import silero_vad

        yield silero_vad.load_silero_vad(onnx=True)
    finally:
        torch.set_num_threads(threads)


def _reference_probs(reference: Any, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    import torch

    reference.reset_states()
    windows = x[: x.size // WINDOW_SAMPLES * WINDOW_SAMPLES].reshape(-1, WINDOW_SAMPLES)
    return np.array([float(reference(torch.from_numpy(w.copy()), SAMPLE_RATE_HZ)) for w in windows], dtype=np.float32)


@pytest.mark.parametrize("source", ["speech_like", "espeak"])
def test_matches_silero_reference(
    model: SileroVadModel, silero_reference: Any, source: str, request: pytest.FixtureRequest
) -> None:
    """Our stream reproduces silero's OnnxWrapper window for window (context and state handled alike)."""
    x = _padded(_speech_like(2.0, seed=7)) if source == "speech_like" else request.getfixturevalue("espeak_speech")
    ours = _feed_in_pieces(model.stream(), x, seed=8)
    np.testing.assert_allclose(ours, _reference_probs(silero_reference, x), atol=1e-5)
