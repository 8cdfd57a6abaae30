"""Tests for omni_server.media.resample: streaming and one-shot sample-rate conversion."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from omni_server.media.resample import StreamResampler, resample

RATE_PAIRS = [(48_000, 16_000), (16_000, 24_000), (24_000, 48_000), (44_100, 16_000), (22_050, 16_000)]


def _sine(freq_hz: float, rate_hz: int, seconds: float) -> npt.NDArray[np.float32]:
    t = np.arange(int(rate_hz * seconds)) / rate_hz
    return (0.5 * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def _stream_in_pieces(
    resampler: StreamResampler, x: npt.NDArray[np.float32], rng: np.random.Generator
) -> npt.NDArray[np.float32]:
    outs = []
    pos = 0
    while pos < x.size:
        n = int(rng.integers(0, 4000))  # includes empty pieces
        outs.append(resampler.process(x[pos : pos + n]))
        pos += n
    outs.append(resampler.flush())
    return np.concatenate(outs)


@pytest.mark.parametrize(("src", "dst"), RATE_PAIRS)
def test_random_pieces_match_one_shot(src: int, dst: int) -> None:
    """A sine resampled in random-size pieces, then flushed, equals the one-shot result."""
    x = _sine(440.0, src, 1.5)
    streamed = _stream_in_pieces(StreamResampler(src, dst), x, np.random.default_rng(src + dst))
    one_shot = resample(x, src, dst)
    assert streamed.dtype == np.float32
    assert streamed.shape == one_shot.shape
    np.testing.assert_allclose(streamed, one_shot, atol=1e-5)


@pytest.mark.parametrize(("src", "dst"), RATE_PAIRS)
def test_one_shot_keeps_duration_and_pitch(src: int, dst: int) -> None:
    """Output length follows the rate ratio and a 440 Hz tone is still at 440 Hz."""
    x = _sine(440.0, src, 1.0)
    y = resample(x, src, dst)
    assert y.dtype == np.float32
    assert y.size == dst
    spectrum = np.abs(np.fft.rfft(y[dst // 10 : -dst // 10] * np.hanning(y.size - 2 * (dst // 10))))
    peak_hz = np.argmax(spectrum) * dst / (y.size - 2 * (dst // 10))
    assert abs(peak_hz - 440.0) < 3.0


def test_stream_has_no_seam_at_chunk_boundaries() -> None:
    """20 ms chunks of a continuous tone come out without clicks: sample-to-sample steps stay small."""
    x = _sine(300.0, 48_000, 1.0)
    r = StreamResampler(48_000, 16_000)
    y = np.concatenate([r.process(x[i : i + 960]) for i in range(0, x.size, 960)] + [r.flush()])
    steady = y[200:-200]
    max_step = 2 * np.pi * 300.0 / 16_000 * 0.5  # the largest step of the ideal tone
    assert np.abs(np.diff(steady)).max() < max_step * 1.01


def test_flush_resets_for_a_new_stream() -> None:
    """After flush the same resampler handles an unrelated stream as if new."""
    r = StreamResampler(48_000, 16_000)
    rng = np.random.default_rng(1)
    first = _stream_in_pieces(r, _sine(440.0, 48_000, 0.5), rng)
    x = _sine(1000.0, 48_000, 0.5)
    second = _stream_in_pieces(r, x, rng)
    assert first.size == 8000
    np.testing.assert_allclose(second, resample(x, 48_000, 16_000), atol=1e-5)


def test_reset_drops_held_back_audio() -> None:
    """reset() discards the tail, so flush afterwards returns nothing."""
    r = StreamResampler(48_000, 16_000)
    r.process(_sine(440.0, 48_000, 0.1))
    assert r.delay_samples > 0
    r.reset()
    assert r.flush().size == 0


def test_equal_rates_are_an_identity_copy() -> None:
    """With equal rates both APIs return an equal copy and hold nothing back."""
    x = _sine(440.0, 16_000, 0.1)
    r = StreamResampler(16_000, 16_000)
    y = r.process(x)
    np.testing.assert_array_equal(y, x)
    assert y is not x and not np.shares_memory(y, x)
    assert r.flush().size == 0 and r.delay_samples == 0
    z = resample(x, 16_000, 16_000)
    np.testing.assert_array_equal(z, x)
    assert not np.shares_memory(z, x)


def test_empty_input_gives_empty_output() -> None:
    """Empty arrays are accepted everywhere and give empty float32 arrays."""
    r = StreamResampler(48_000, 16_000)
    assert r.process(np.zeros(0, dtype=np.float32)).shape == (0,)
    assert r.flush().dtype == np.float32
    assert resample(np.zeros(0), 48_000, 16_000).shape == (0,)


def test_float64_input_is_converted() -> None:
    """Non-float32 input is converted rather than refused."""
    y = resample(np.zeros(480, dtype=np.float64), 48_000, 16_000)
    assert y.dtype == np.float32 and y.size == 160


@pytest.mark.parametrize(("src", "dst"), [(0, 16_000), (16_000, -1)])
def test_rejects_non_positive_rates(src: int, dst: int) -> None:
    """Rates must be positive."""
    with pytest.raises(ValueError, match="> 0"):
        StreamResampler(src, dst)
    with pytest.raises(ValueError, match="> 0"):
        resample(np.zeros(10), src, dst)


def test_rejects_multichannel() -> None:
    """Only mono (1-D) input is accepted."""
    with pytest.raises(ValueError, match="1-D"):
        StreamResampler(48_000, 16_000).process(np.zeros((10, 2), dtype=np.float32))
