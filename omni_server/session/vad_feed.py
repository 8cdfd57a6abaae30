"""A call's voice activity detection, awaited: `probs = await vad.feed(samples)` over the shared batcher.

Owns `CallVad`, the event loop's side of `media.vad_batch.BatchedVadStream`: a piece that completes no
32 ms window is answered at once; otherwise the call waits, without blocking the loop, while the
batcher's thread runs its windows together with every other call's, and the result comes back with
one `call_soon_threadsafe`.

Must not import: websockets, aiortc, torch.
"""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import numpy.typing as npt

from omni_server.media.vad_batch import VadBatcher

Probs = npt.NDArray[np.float32]


class CallVad:
    """One call's VAD stream; `feed` one piece at a time (the call's input loop awaits each)."""

    def __init__(self, batcher: VadBatcher) -> None:
        self._stream = batcher.stream()

    async def feed(self, samples: npt.ArrayLike) -> Probs:
        """The speech probability of every 512-sample window these samples complete (maybe none)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Probs] = loop.create_future()

        def on_done(result: Probs | BaseException) -> None:  # on the batcher's thread
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
                loop.call_soon_threadsafe(_settle, future, result)

        ready = self._stream.submit(samples, on_done)
        if ready is not None:
            return ready
        return await future


def _settle(future: asyncio.Future[Probs], result: Probs | BaseException) -> None:
    if future.done():  # the call was cancelled meanwhile
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
