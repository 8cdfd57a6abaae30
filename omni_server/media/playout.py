"""The reply's playout buffer for a media track: 24 kHz float32 chunks in, fixed 20 ms s16 frames out.

`PlayoutBuffer.write` takes each speech chunk the moment the model makes it (usually faster than real
time), resamples it to the track's rate if that differs (soxr holds back a few ms until `end`) and
queues it; `read` hands out exactly one frame's samples,
padded with silence when the buffer runs dry, so a paced sender can call it every 20 ms whatever
the model does. `flush` drops everything queued (barge-in) and the resampler's held-back tail with it.

Overflow policy: the buffer holds at most `max_s` seconds; audio written beyond that is dropped
(counted in `dropped_samples`). A reply is bounded by the server's `--max-new-tokens`, so this only
guards against a runaway writer.

Underruns: running dry while a reply is still being written (`writing`) is a gap the listener
hears; each such gap is counted once in `underruns`.

Pure numpy + soxr: must not import torch, sockets, asyncio or anything from `omni_server` outside `media`.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import numpy.typing as npt

from omni_server.media.pcm import f32_to_s16
from omni_server.media.resample import StreamResampler

__all__ = ["PlayoutBuffer"]


class PlayoutBuffer:
    """A bounded FIFO of int16 mono samples at `rate_hz`, read in `frame_samples` pieces."""

    def __init__(
        self, *, input_rate_hz: int = 24_000, rate_hz: int = 24_000, frame_ms: int = 20, max_s: float = 120.0
    ) -> None:
        self.rate_hz = rate_hz
        self.frame_samples = rate_hz * frame_ms // 1000
        self._max_samples = int(max_s * rate_hz)
        self._resampler = StreamResampler(input_rate_hz, rate_hz)
        self._chunks: deque[npt.NDArray[np.int16]] = deque()
        self._queued = 0
        self.writing = False  # a reply is being written: running dry now is an audible gap
        self.written_samples = 0
        self.played_samples = 0  # non-silent samples handed out
        self.dropped_samples = 0  # flushed on barge-in, or over the bound
        self.underruns = 0
        self.flushes = 0
        self._dry = True

    @property
    def queued_s(self) -> float:
        return self._queued / self.rate_hz

    def write(self, samples: npt.NDArray[np.float32]) -> None:
        """Queue one chunk of reply audio (mono float32 at `input_rate_hz`)."""
        self.writing = True
        self._push(self._resampler.process(samples))

    def end(self) -> None:
        """The reply is complete: release the resampler's tail; running dry after this is no gap."""
        self._push(self._resampler.flush())
        self.writing = False

    def flush(self) -> int:
        """Drop everything queued at once (barge-in); returns how many samples were dropped."""
        dropped = self._queued
        if dropped or self.writing:
            self.flushes += 1
        self._chunks.clear()
        self._queued = 0
        self._resampler.reset()
        self.writing = False
        self.dropped_samples += dropped
        return dropped

    def read(self) -> npt.NDArray[np.int16]:
        """The next frame: queued audio first, then silence."""
        out = np.zeros(self.frame_samples, dtype=np.int16)
        filled = 0
        while filled < self.frame_samples and self._chunks:
            head = self._chunks[0]
            take = min(len(head), self.frame_samples - filled)
            out[filled : filled + take] = head[:take]
            filled += take
            if take == len(head):
                self._chunks.popleft()
            else:
                self._chunks[0] = head[take:]
        self._queued -= filled
        self.played_samples += filled
        short = filled < self.frame_samples
        if short and self.writing and (filled or not self._dry):
            self.underruns += 1
        self._dry = short
        return out

    def _push(self, samples: npt.NDArray[np.float32]) -> None:
        if not samples.size:
            return
        room = self._max_samples - self._queued
        if samples.size > room:
            self.dropped_samples += samples.size - max(room, 0)
            samples = samples[: max(room, 0)]
        if samples.size:
            self._chunks.append(f32_to_s16(samples))
            self._queued += samples.size
            self.written_samples += samples.size
