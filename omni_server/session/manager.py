"""Who may call now: admission to the engine's call slots, the waiting queue, and the live calls.

`Admission` hands out `max_sessions` slots per engine; callers beyond that wait in a FIFO queue of at
most `max_queue`, told their position and a wait estimate measured from how long calls actually
hold a slot (updated every few seconds while they wait). Leaving the queue or hanging up frees the
place at once. `SessionManager` turns a client's `session.init` into a `CallSession`.

Must not import: websockets, aiortc, torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np

from omni_server.config import Settings
from omni_server.engine.worker import EngineWorker
from omni_server.errors import SessionRefused
from omni_server.media.pcm import decode_f32_base64
from omni_server.media.vad import SileroVadModel
from omni_server.protocol import SessionInit
from omni_server.session.session import CallConfig, CallSession, Send
from omni_server.session.turns import TurnConfig

logger = logging.getLogger(__name__)
OnQueued = Callable[[int, float, int], Awaitable[None]]  # (position, estimated_wait_s, queue_length)
MAX_REFERENCE_S = 60.0


class Admission:
    """Call slots and a FIFO waiting queue with measured wait estimates."""

    def __init__(
        self, max_active: int, max_queue: int, *, clock: Callable[[], float] = time.monotonic, update_s: float = 3.0
    ) -> None:
        self.max_active, self.max_queue = max_active, max_queue
        self.active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._clock = clock
        self._update_s = update_s
        self._mean_hold_s = 120.0  # prior until calls have been measured
        self._closed = False

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def estimate_wait_s(self, position: int) -> float:
        return round(self._mean_hold_s * position / self.max_active, 1)

    def close(self) -> None:
        """Stop admitting (shutdown): waiting callers are refused."""
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(SessionRefused("The server is shutting down.", code="server_shutdown"))

    @contextlib.asynccontextmanager
    async def slot(self, on_queued: OnQueued) -> AsyncIterator[None]:
        if self._closed:
            raise SessionRefused("The server is shutting down.", code="server_shutdown")
        if self.active >= self.max_active or self._waiters:
            await self._wait(on_queued)
        else:
            self.active += 1
        start = self._clock()
        try:
            yield
        finally:
            held = self._clock() - start
            self._mean_hold_s = 0.7 * self._mean_hold_s + 0.3 * held
            self._release()

    async def _wait(self, on_queued: OnQueued) -> None:
        if len(self._waiters) >= self.max_queue:
            raise SessionRefused("All call slots are busy and the queue is full; try again later.", code="queue_full")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            while True:
                position = self._waiters.index(waiter) + 1
                await on_queued(position, self.estimate_wait_s(position), len(self._waiters))
                done, _ = await asyncio.wait([waiter], timeout=self._update_s)
                if done:
                    waiter.result()  # raises if refused at shutdown
                    return
        except BaseException:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            elif waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._release()  # granted while we were leaving: hand the slot on
            raise

    def _release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes straight to the next caller
                return
        self.active -= 1


class SessionManager:
    """Makes calls from `session.init` and keeps the live ones (for shutdown and metrics)."""

    def __init__(self, settings: Settings, worker: EngineWorker, vad_model: SileroVadModel) -> None:
        self.settings = settings
        self.worker = worker
        self.vad_model = vad_model
        self.admission = Admission(settings.max_sessions, settings.max_queue)
        self.sessions: dict[str, CallSession] = {}

    def new_call_id(self) -> str:
        return f"rt_{int(time.time() * 1000)}_{secrets.token_hex(3)}"

    def call_config(self, init: SessionInit, *, video: bool) -> CallConfig:
        """Resolve a client's `session.init` against the server's settings and limits."""
        s = self.settings
        td = init.turn_detection
        ref = None
        if init.ref_audio_base64:
            ref = decode_f32_base64(init.ref_audio_base64, max_samples=int(MAX_REFERENCE_S * 16_000))
        instructions = "\n".join(t for t in (init.system_prompt, init.instructions) if t) or None
        max_new_tokens = s.max_new_tokens if init.max_tokens is None else max(1, min(init.max_tokens, s.max_new_tokens))
        max_context = s.max_context_tokens
        if init.max_kv_tokens is not None:
            max_context = max(1024, min(init.max_kv_tokens, max_context))
        silence_ms = td.silence_ms if td.silence_ms is not None else s.vad_silence_ms
        threshold = td.threshold if td.threshold is not None else s.vad_threshold
        min_speech_ms = td.min_speech_ms if td.min_speech_ms is not None else s.vad_min_speech_ms
        # Out-of-range numbers from a client are brought into range, as the fields above are.
        slices = None if init.max_slice_nums is None else min(max(init.max_slice_nums, 1), 9)
        return CallConfig(
            video=video,
            conversation_mode=init.conversation_mode,
            language=init.language,
            instructions=instructions,
            ref_audio=None if ref is None else np.ascontiguousarray(ref, dtype=np.float32),
            max_new_tokens=max_new_tokens,
            temperature=None if init.temperature is None else min(max(init.temperature, 0.05), 2.0),
            tts_enabled=init.tts_enabled,
            max_slice_nums=2 if init.vision_hd else slices,
            turn_detection=td.enabled,
            turn=TurnConfig(
                threshold=min(max(threshold, 0.05), 0.95),
                min_silence_ms=min(max(silence_ms, 100), 5000),
                min_speech_ms=min(max(min_speech_ms, 0), 5000),
            ),
            barge_in=s.barge_in if td.barge_in is None else td.barge_in,
            preroll_ms=s.preroll_ms,
            max_context_tokens=max_context,
            max_call_s=s.max_call_s,
            idle_timeout_s=s.idle_timeout_s,
        )

    def create(self, call_id: str, config: CallConfig, send: Send) -> CallSession:
        session = CallSession(call_id, self.worker, config, send, self.vad_model)
        self.sessions[call_id] = session
        return session

    def forget(self, call_id: str) -> None:
        self.sessions.pop(call_id, None)

    def snapshot(self) -> dict[str, Any]:
        return {"active": self.admission.active, "queued": self.admission.queued, "calls": len(self.sessions)}
