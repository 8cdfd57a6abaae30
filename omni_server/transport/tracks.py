"""WebRTC media tracks of one call: the reply as an outgoing audio track, and the drains of incoming tracks.

`ReplyAudioTrack` is the call's `AudioSink`: the session writes 24 kHz reply chunks into its
`PlayoutBuffer`, and aiortc's sender pulls one 20 ms frame at a time, paced on the clock, silence when
there is nothing to say; `flush` empties it at once on barge-in. Frames are 48 kHz, Opus's own rate,
resampled here as chunks arrive: given 24 kHz frames, aiortc's encoder resamples them itself into
960-sample frames, and its resampler cannot fill one until the next frame comes, so every reply
reached the listener 20 ms late. (The resampler here holds back a chunk's last few ms until the next
chunk, which is there long before they are due.)

aiortc queues every decoded frame of a remote track in an unbounded queue, so each incoming track is
drained by a loop for the whole call. `receive_audio` resamples Opus's 48 kHz stereo frames to 16 kHz
mono float32 and hands them on; `receive_video` keeps one frame a second and converts only
that one to an image: the rest are dropped undecoded to pixels.

Must not import: torch, the engine.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import time
from collections.abc import Awaitable, Callable

import av
import numpy as np
import numpy.typing as npt
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from PIL import Image

from omni_server.media.playout import PlayoutBuffer

logger = logging.getLogger(__name__)
TRACK_RATE_HZ = 48_000  # Opus's rate: aiortc encodes these frames without resampling (and holding) them
MODEL_RATE_HZ = 24_000  # what the session writes
FRAME_MS = 20
INPUT_RATE_HZ = 16_000


class ReplyAudioTrack(MediaStreamTrack):
    """Outgoing reply audio: paced 20 ms mono s16 frames at 48 kHz; silence when idle; flushable."""

    kind = "audio"

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, max_buffer_s: float = 120.0) -> None:
        super().__init__()
        self.buffer = PlayoutBuffer(
            input_rate_hz=MODEL_RATE_HZ, rate_hz=TRACK_RATE_HZ, frame_ms=FRAME_MS, max_s=max_buffer_s
        )
        self._clock = clock
        self._start: float | None = None
        self._pts = 0
        self._time_base = fractions.Fraction(1, TRACK_RATE_HZ)

    # ---- AudioSink (called by the session) --------------------------------------------------------

    def write(self, samples: npt.NDArray[np.float32]) -> None:
        self.buffer.write(samples)

    def end(self) -> None:
        self.buffer.end()

    def flush(self) -> None:
        self.buffer.flush()

    # ---- MediaStreamTrack (called by aiortc's sender) ---------------------------------------------

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        step = self.buffer.frame_samples
        if self._start is None:
            self._start = self._clock()
        else:
            self._pts += step
            # Absolute schedule: a late wake-up is caught up by the next frames instead of drifting.
            wait = self._start + self._pts / TRACK_RATE_HZ - self._clock()
            if wait > 0:
                await asyncio.sleep(wait)
        samples = self.buffer.read()
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = TRACK_RATE_HZ
        frame.pts = self._pts
        frame.time_base = self._time_base
        return frame


async def receive_audio(track: MediaStreamTrack, on_samples: Callable[[npt.NDArray[np.float32]], None]) -> None:
    """Drain a remote audio track until it ends, passing on 16 kHz mono float32 pieces (20 ms each)."""
    # Opus decodes to stereo even from a mono microphone. swresample's own downmix would add 3 dB
    # (L=R summed at -3 dB each), so resample both channels and average them here.
    resampler = av.AudioResampler(format="fltp", layout="stereo", rate=INPUT_RATE_HZ)
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        if not isinstance(frame, av.AudioFrame):
            continue
        for out in resampler.resample(frame):
            samples = out.to_ndarray().mean(axis=0, dtype=np.float32)
            if samples.size:
                on_samples(samples)


async def receive_video(
    track: MediaStreamTrack,
    on_image: Callable[[Image.Image], Awaitable[None]] | None,
    *,
    every_s: float = 1.0,
    max_pixels: int,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Drain a remote video track until it ends; every `every_s`, the latest frame goes to `on_image`.

    With no `on_image` (a voice call that was sent a camera anyway) every frame is dropped."""
    next_at = 0.0
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        if on_image is None or clock() < next_at or not isinstance(frame, av.VideoFrame):
            continue
        if frame.width * frame.height > max_pixels:
            logger.debug("camera frame of %dx%d over the pixel limit; skipped", frame.width, frame.height)
            continue
        next_at = clock() + every_s
        image = await asyncio.to_thread(frame.to_image)  # yuv -> RGB off the event loop
        await on_image(image)
