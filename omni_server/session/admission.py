"""Who may call now: an engine's call slots and KV memory, and the FIFO queue of callers waiting for them.

A call holds one slot and reserves the KV-cache memory its longest context can take (`kv_bytes`:
max_context_tokens × the engine's KV bytes per token) for as long as it lasts. `Admission` grants a
call when both a slot is free (`max_active`) and its reservation fits the budget (`kv_budget_bytes`;
0: no budget); otherwise the caller waits in a FIFO queue of at most `max_queue` and is told its
position and a wait estimate, again every `update_s` seconds. A full queue, a reservation larger
than the whole budget, or a shutdown refuses with `SessionRefused` (codes `queue_full`,
`kv_budget_exceeded`, `server_shutdown`). Leaving the queue or ending the call gives everything back
at once, and the next callers who now fit are granted in the same step.

The interface, for the transports and for a cluster-wide admission that wraps or replaces it:

    async with admission.slot(on_queued, kv_bytes=n):   # waits (calling on_queued) or refuses
        ...                                           # the call runs; leaving frees the slot and n bytes
    admission.active, .queued, .kv_reserved_bytes, .kv_budget_bytes, .max_active, .max_queue
    admission.estimate_wait_s(position)               # seconds, from measured call lengths
    admission.close()                                 # refuse waiting and future callers (shutdown)
    admission.resize(max_active)                      # capacity changed (cluster replicas came or went)

Wait estimates are measured: the mean time calls hold a slot (an exponential average of finished
calls, 120 s until one has finished) minus how long each live call has already held its slot gives
when each slot should free; position p waits for the p-th of those, cycling through the slots.

Must not import: websockets, aiortc, torch, the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from omni_server.errors import SessionRefused

OnQueued = Callable[[int, float, int], Awaitable[None]]  # (position, estimated_wait_s, queue_length)
PRIOR_HOLD_S = 120.0  # assumed call length until a call has finished
HOLD_EMA_WEIGHT = 0.3  # weight of the newest finished call in the mean hold time


@dataclass(eq=False)
class _Waiter:
    future: asyncio.Future[None]
    kv_bytes: int


class Admission:
    """Call slots and a KV memory budget per engine, with a FIFO waiting queue and measured wait estimates."""

    def __init__(
        self,
        max_active: int,
        max_queue: int,
        *,
        kv_budget_bytes: int = 0,
        clock: Callable[[], float] = time.monotonic,
        update_s: float = 3.0,
    ) -> None:
        self.max_active, self.max_queue = max_active, max_queue
        self.kv_budget_bytes = kv_budget_bytes
        self.active = 0
        self.kv_reserved_bytes = 0
        self._waiters: deque[_Waiter] = deque()
        self._held_since: dict[int, float] = {}  # live calls: when each took its slot
        self._ids = itertools.count()
        self._clock = clock
        self._update_s = update_s
        self._mean_hold_s = PRIOR_HOLD_S
        self._closed = False

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def estimate_wait_s(self, position: int) -> float:
        """Seconds until the caller at `position` (1 = next) should get a slot."""
        now = self._clock()
        floor = min(self._update_s, self._mean_hold_s)  # a call past the mean may still end any moment
        frees = sorted(max(self._mean_hold_s - (now - t), floor) for t in self._held_since.values())
        if not frees:
            return 0.0
        rounds, index = divmod(position - 1, len(frees))
        return round(frees[index] + rounds * self._mean_hold_s, 1)

    def resize(self, max_active: int) -> None:
        """New capacity (cluster mode: engine replicas came or went). Waiting callers who now fit are
        granted; after a shrink, calls over capacity run on and their slots vanish as they end."""
        self.max_active = max_active
        self._grant()

    def close(self) -> None:
        """Stop admitting (shutdown): waiting callers are refused."""
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.future.done():
                waiter.future.set_exception(SessionRefused("The server is shutting down.", code="server_shutdown"))

    @contextlib.asynccontextmanager
    async def slot(self, on_queued: OnQueued, *, kv_bytes: int = 0) -> AsyncIterator[None]:
        """Hold a call slot and `kv_bytes` of the KV budget for the body; wait in the queue if needed."""
        if self._closed:
            raise SessionRefused("The server is shutting down.", code="server_shutdown")
        if self.kv_budget_bytes and kv_bytes > self.kv_budget_bytes:
            raise SessionRefused(
                "This call needs more model memory than the server has for calls.", code="kv_budget_exceeded"
            )
        if not self._waiters and self._fits(kv_bytes):
            self._take(kv_bytes)
        else:
            await self._wait(on_queued, kv_bytes)
        key = next(self._ids)
        start = self._held_since[key] = self._clock()
        try:
            yield
        finally:
            del self._held_since[key]
            held = self._clock() - start
            self._mean_hold_s += HOLD_EMA_WEIGHT * (held - self._mean_hold_s)
            self._give_back(kv_bytes)

    async def _wait(self, on_queued: OnQueued, kv_bytes: int) -> None:
        if len(self._waiters) >= self.max_queue:
            raise SessionRefused("All call slots are busy and the queue is full; try again later.", code="queue_full")
        waiter = _Waiter(asyncio.get_running_loop().create_future(), kv_bytes)
        self._waiters.append(waiter)
        try:
            while True:
                position = self._waiters.index(waiter) + 1
                await on_queued(position, self.estimate_wait_s(position), len(self._waiters))
                done, _ = await asyncio.wait([waiter.future], timeout=self._update_s)
                if done:
                    waiter.future.result()  # raises if refused at shutdown
                    return
        except BaseException:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
                self._grant()  # a large reservation at the head may have held smaller ones back
            elif waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
                self._give_back(kv_bytes)  # granted while we were leaving: hand it on
            raise

    def _fits(self, kv_bytes: int) -> bool:
        if self.active >= self.max_active:
            return False
        return not self.kv_budget_bytes or self.kv_reserved_bytes + kv_bytes <= self.kv_budget_bytes

    def _take(self, kv_bytes: int) -> None:
        self.active += 1
        self.kv_reserved_bytes += kv_bytes

    def _give_back(self, kv_bytes: int) -> None:
        self.active -= 1
        self.kv_reserved_bytes -= kv_bytes
        self._grant()

    def _grant(self) -> None:
        """Admit waiters from the head of the queue while they fit (FIFO: nobody overtakes)."""
        while self._waiters and self._fits(self._waiters[0].kv_bytes):
            waiter = self._waiters.popleft()
            if waiter.future.done():  # refused or abandoned
                continue
            self._take(waiter.kv_bytes)
            waiter.future.set_result(None)
