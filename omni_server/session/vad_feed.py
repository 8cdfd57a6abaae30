"""Calls' voice activity detection, awaited: `probs = await vad.feed(samples)` over one shared batcher.

Owns `VadFeed` (the server's `media.vad_batch.VadBatcher` and the way its results get back to event
loops) and `CallVad` (one call's stream). A piece that completes no 32 ms window is answered at once;
otherwise the call waits, without blocking its loop, while the batcher's thread runs its windows
together with every other call's. A round's results go into one inbox per event loop, handed over by
a single `call_soon_threadsafe` after the round (each costs a self-pipe write and a loop wake-up, and
the write lets the loop take the GIL, so per-call hand-overs would each wake it).

Must not import: websockets, aiortc, torch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

import numpy as np
import numpy.typing as npt

from omni_server.media.vad import SileroVadModel
from omni_server.media.vad_batch import BatchedVadStream, VadBatcher

Probs = npt.NDArray[np.float32]


class VadFeed:
    """The server's VAD: one batcher for every call (`stream()` makes a call's), closed at shutdown.

    `batcher_options` go to `VadBatcher` (tests set its tick or idle exit)."""

    def __init__(self, model: SileroVadModel, **batcher_options: Any) -> None:
        self.batcher = VadBatcher(model, after_round=self._hand_over, **batcher_options)
        self._inboxes: dict[asyncio.AbstractEventLoop, _Inbox] = {}

    def stream(self) -> CallVad:
        """A new call's VAD stream, with fresh state."""
        return CallVad(self)

    def close(self) -> None:
        """Finish what is queued and stop the batcher's thread (blocking: call it off the event loop)."""
        self.batcher.close()

    def _inbox(self, loop: asyncio.AbstractEventLoop) -> _Inbox:
        inbox = self._inboxes.get(loop)
        if inbox is None:
            inbox = self._inboxes[loop] = _Inbox(loop)
            for other in [lp for lp in self._inboxes if lp.is_closed()]:  # a test's finished loop
                del self._inboxes[other]
        return inbox

    def _hand_over(self) -> None:  # on the batcher's thread, after a round
        for inbox in list(self._inboxes.values()):
            inbox.hand_over()


class CallVad:
    """One call's VAD stream; `feed` one piece at a time (the call's input loop awaits each)."""

    def __init__(self, feed: VadFeed) -> None:
        self._feed = feed
        self._stream: BatchedVadStream = feed.batcher.stream()

    async def feed(self, samples: npt.ArrayLike) -> Probs:
        """The speech probability of every 512-sample window these samples complete (maybe none)."""
        loop = asyncio.get_running_loop()
        inbox = self._feed._inbox(loop)
        future: asyncio.Future[Probs] = loop.create_future()
        ready = self._stream.submit(samples, lambda result: inbox.put(future, result))
        if ready is not None:
            return ready
        return await future


class _Inbox:
    """Results for one event loop: put on the batcher's thread, settled on the loop in one callback."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: deque[tuple[asyncio.Future[Probs], Probs | BaseException]] = deque()
        self._scheduled = False

    def put(self, future: asyncio.Future[Probs], result: Probs | BaseException) -> None:
        self._items.append((future, result))

    def hand_over(self) -> None:
        if self._items and not self._scheduled:  # else a drain is due and takes them (it clears the flag first)
            self._scheduled = True
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
                self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        self._scheduled = False
        while self._items:
            future, result = self._items.popleft()
            if future.done():  # the call was cancelled meanwhile
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
