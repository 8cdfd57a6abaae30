"""Where references become voices: a few low-priority threads, and a bounded number of callers waiting.

Decoding an uploaded file and running silero-vad over it is seconds of CPU for a long clip. On the
default executor, a dozen parallel uploads of 115-s files tripled another call's turn latency: they
took every core from the threads the calls need (VAD off the loop, camera frames, the engine). Here
at most `workers` references are prepared at once, on threads whose scheduling priority is lowered
(`nice`, per thread on Linux), so calls always go first; at most `max_waiting` more wait their
turn, and beyond that a reference is refused at once with `busy` rather than queued without bound.
Waiting callers hold no thread: they await the pool's future.

Must not import: torch, the engine, websockets, aiortc.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from omni_server.errors import SessionRefused
from omni_server.library.reference import voice_from_file, voice_from_pcm
from omni_server.media.audio_file import DecodeLimits
from omni_server.media.vad import SileroVadModel
from omni_server.media.voice_prep import PreparedVoice

logger = logging.getLogger(__name__)
T = TypeVar("T")
NICE = 10  # well below the calls' threads, still above idle work


class VoicePreparer:
    """Decodes and prepares references off the event loop, a few at a time, below the calls' priority."""

    def __init__(
        self, limits: DecodeLimits, vad: SileroVadModel, *, workers: int = 1, max_waiting: int = 8, nice: int = NICE
    ) -> None:
        self.limits = limits
        self.vad = vad
        self._pool = ThreadPoolExecutor(workers, "voice-prep", initializer=_lower_priority, initargs=(nice,))
        self._places = threading.BoundedSemaphore(workers + max_waiting)  # taken by asyncio and worker threads

    async def from_file(self, data: bytes, content_type: str) -> PreparedVoice:
        """An uploaded or recorded file, decoded within `limits`, checked and prepared."""
        return await self._run(voice_from_file, data, content_type, self.limits, self.vad)

    async def from_pcm(self, samples: npt.NDArray[np.float32]) -> PreparedVoice:
        """16 kHz mono float32 samples (the SDK's `voice.ref_audio_base64`), checked and prepared."""
        return await self._run(voice_from_pcm, samples, self.vad)

    def close(self) -> None:
        """Stop: preparations not started are dropped (their callers see a cancellation)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        if not self._places.acquire(blocking=False):
            raise SessionRefused("The server is preparing many voices right now; try again in a moment.", code="busy")
        try:
            job = self._pool.submit(fn, *args)
        except RuntimeError as e:  # closed: the server is stopping
            self._places.release()
            raise SessionRefused("The server is shutting down.", code="server_shutdown") from e
        job.add_done_callback(lambda _: self._places.release())  # a place is held until the work is done
        return await asyncio.wrap_future(job)


def _lower_priority(nice: int) -> None:
    """Lower this worker thread's CPU priority (Linux schedules threads separately; elsewhere, do nothing)."""
    if sys.platform != "linux":
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except OSError as e:  # e.g. a sandbox that forbids it: preparing still works, just not deprioritised
        logger.warning("could not lower the voice preparation thread's priority: %s", e)
