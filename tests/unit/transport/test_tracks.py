"""Tests for omni_server.transport.tracks: the paced reply track and the drains of incoming tracks."""

from __future__ import annotations

import fractions
import time

import av
import numpy as np
import numpy.typing as npt
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from PIL import Image

from omni_server.transport.tracks import ReplyAudioTrack, receive_audio, receive_video


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class ListTrack(MediaStreamTrack):
    """A remote track stand-in: hands out the given frames, then ends as aiortc's tracks do."""

    def __init__(self, kind: str, frames: list[av.AudioFrame | av.VideoFrame], clock: FakeClock | None = None) -> None:
        super().__init__()
        self.kind = kind
        self.frames = frames
        self.clock = clock

    async def recv(self) -> av.AudioFrame | av.VideoFrame:
        if not self.frames:
            raise MediaStreamError
        if self.clock is not None:
            self.clock.now += 0.05  # 20 frames a second
        return self.frames.pop(0)


def opus_like_frames(seconds: float) -> list[av.AudioFrame]:
    """What aiortc's Opus decoder gives: 20 ms of s16 stereo at 48 kHz, packed as (1, 1920)."""
    frames = []
    for i in range(int(seconds * 50)):
        t = (np.arange(960) + i * 960) / 48_000
        mono = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.repeat(mono, 2).reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = 48_000, i * 960, fractions.Fraction(1, 48_000)
        frames.append(frame)
    return frames


async def test_reply_track_frames_carry_written_audio_then_silence() -> None:
    """Each recv is one 20 ms mono s16 frame at Opus's 48 kHz with running timestamps: the written 24 kHz
    audio, then silence."""
    clock = FakeClock()
    track = ReplyAudioTrack(clock=clock)
    track.write(np.full(720, 0.5, dtype=np.float32))  # 30 ms
    track.end()
    frames = []
    for _ in range(3):
        frames.append(await track.recv())
        clock.now += 0.02  # on schedule: no waiting
    assert [f.pts for f in frames] == [0, 960, 1920]
    assert all(f.sample_rate == 48_000 and f.format.name == "s16" and f.layout.name == "mono" for f in frames)
    assert all(f.samples == 960 for f in frames)
    steady = frames[0].to_ndarray()[0, 200:800]  # away from the resampler's edges
    assert np.all(np.abs(steady.astype(np.int32) - 16384) < 400)
    assert int(np.abs(frames[2].to_ndarray()).max()) == 0


async def test_reply_track_is_paced_in_real_time() -> None:
    """A sender pulling as fast as it can gets 20 ms of audio per 20 ms of time, never more."""
    track = ReplyAudioTrack()
    start = time.monotonic()
    for _ in range(11):
        await track.recv()
    assert time.monotonic() - start >= 0.2


async def test_reply_track_flush_silences_the_next_frame() -> None:
    """Barge-in: after `flush` the very next frame is silence."""
    clock = FakeClock()
    track = ReplyAudioTrack(clock=clock)
    track.write(np.full(24_000, 0.5, dtype=np.float32))
    assert (await track.recv()).to_ndarray().any()
    track.flush()
    clock.now += 0.02
    assert not (await track.recv()).to_ndarray().any()
    assert track.buffer.dropped_samples > 48_000 - 960 - 2000  # all but the first frame (and soxr's hold)


async def test_receive_audio_gives_16k_mono_float32() -> None:
    """Opus's 48 kHz stereo frames come out as 16 kHz mono float32, all of it, until the track ends."""
    pieces: list[npt.NDArray[np.float32]] = []
    await receive_audio(ListTrack("audio", opus_like_frames(1.0)), pieces.append)
    audio = np.concatenate(pieces)
    assert audio.dtype == np.float32
    assert abs(len(audio) - 16_000) < 400
    assert 0.15 < float(np.sqrt(np.mean(audio[1000:] ** 2))) < 0.2  # 8000/32768/sqrt(2)


async def test_receive_video_keeps_one_frame_a_second() -> None:
    """Of 3 s of 20 fps camera frames only one a second becomes an image; frames over the pixel cap are skipped."""
    clock = FakeClock()
    frames = [av.VideoFrame.from_ndarray(np.full((48, 64, 3), i, np.uint8), format="rgb24") for i in range(60)]
    images: list[Image.Image] = []

    async def on_image(image: Image.Image) -> None:
        images.append(image)

    await receive_video(ListTrack("video", frames, clock), on_image, max_pixels=64 * 48, clock=clock)
    assert len(images) == 3 and images[0].size == (64, 48)

    big = [av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")]
    await receive_video(ListTrack("video", big, clock), on_image, max_pixels=100, clock=clock)
    await receive_video(ListTrack("video", frames[:5], clock), None, max_pixels=64 * 48, clock=clock)
    assert len(images) == 3
