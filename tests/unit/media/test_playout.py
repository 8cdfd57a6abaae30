"""Tests for omni_server.media.playout: the reply's 20 ms frame buffer for the WebRTC track."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from omni_server.media.playout import PlayoutBuffer


def tone(seconds: float, rate_hz: int = 24_000) -> npt.NDArray[np.float32]:
    t = np.arange(int(seconds * rate_hz)) / rate_hz
    return (0.5 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)


def test_empty_buffer_gives_silent_frames_of_20_ms() -> None:
    """With nothing written, every read is one 20 ms frame (480 samples at 24 kHz) of silence."""
    buffer = PlayoutBuffer()
    frame = buffer.read()
    assert frame.dtype == np.int16 and frame.shape == (480,) and not frame.any()
    assert buffer.underruns == 0


def test_written_audio_comes_out_resampled_in_order_then_silence() -> None:
    """0.5 s at 24 kHz comes out as 0.5 s at 48 kHz (25 frames of sound), then silence."""
    buffer = PlayoutBuffer(rate_hz=48_000)
    buffer.write(tone(0.3))
    buffer.write(tone(0.2))
    buffer.end()
    assert buffer.queued_s == 0.5
    frames = [buffer.read() for _ in range(26)]
    assert all(np.abs(f).max() > 10_000 for f in frames[1:24])
    assert not frames[25].any()
    assert buffer.played_samples == 24_000 and buffer.underruns == 0


def test_flush_drops_everything_at_once() -> None:
    """Barge-in: everything queued is dropped and counted; the next frame is silent."""
    buffer = PlayoutBuffer()
    buffer.write(tone(1.0))
    buffer.read()
    dropped = buffer.flush()
    assert dropped == 24_000 - 480 and buffer.dropped_samples == dropped and buffer.flushes == 1
    assert buffer.queued_s == 0 and not buffer.read().any()
    buffer.flush()
    assert buffer.flushes == 1, "flushing an idle buffer is not a flush"


def test_running_dry_mid_reply_is_one_underrun_per_gap() -> None:
    """A gap while the reply is still being written counts once; running dry after `end` does not count."""
    buffer = PlayoutBuffer()
    buffer.write(tone(0.03))
    for _ in range(4):
        buffer.read()
    assert buffer.underruns == 1
    buffer.write(tone(0.03))
    buffer.end()
    for _ in range(4):
        buffer.read()
    assert buffer.underruns == 1


def test_audio_over_the_bound_is_dropped() -> None:
    """The buffer holds at most `max_s`; the excess of a runaway writer is dropped and counted."""
    buffer = PlayoutBuffer(max_s=1.0)
    buffer.write(tone(1.5))
    buffer.end()
    assert buffer.queued_s == 1.0 and buffer.dropped_samples == 12_000
