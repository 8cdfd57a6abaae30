"""The gateway's engine client: `EngineClient` for one call, every model call sent to its replica.

`CallSession` talks to this exactly as to the local `EngineWorker`: open/run/prefill/reply/release,
and a reply's `next`/`close`. Each method becomes one Ray Serve request to the call's replica (routed
there by `PinnedReplicaRouter`), with a timeout on every one, so the gateway never hangs on a replica.
Failures reach the session as `SessionEnded`, whose code is the `session.closed` reason:
`engine_lost` when the replica died or restarted, `engine_timeout` when it stopped answering. An error
the model raised on the replica arrives as the same `EngineError` a local call would give. Clean-up
requests (`release`, a reply's `close`) only log their failures, so a call ends with the reason that
ended it.

Replies stream with a bounded window: up to `window` numbered `reply_next` requests are in flight, so
the next chunk is being made while this one travels, and no more than that is ever made ahead
(backpressure; a barge-in discards at most `window` chunks). A prefetched request carries the
deadline of the chunk before it, a little more urgent than needed, never less.

Must not import: websockets, aiortc, omni_server.session, omni_server.transport.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import RequestCancelledError
from ray.serve.handle import DeploymentHandle, DeploymentResponse

from omni_server.cluster.pool import ReplicaPool
from omni_server.cluster.wire import Progress, has_frames, pack_msgs, relative_deadline
from omni_server.engine.base import EngineInfo, OmniModel, OutputChunk
from omni_server.errors import EngineError, OmniError, SessionEnded

logger = logging.getLogger(__name__)
T = TypeVar("T")
_stream_ids = itertools.count()


@dataclass
class RemoteConversation:
    """A conversation that lives on a replica; `context_tokens`/`compute_s` as of the last answer."""

    id: str
    replica: str
    context_tokens: int = 0
    compute_s: float = 0.0
    closed: bool = False

    def update(self, progress: Progress | None) -> None:
        if progress is not None:
            self.context_tokens, self.compute_s = progress.context_tokens, progress.compute_s


class ClusterClient:
    """`EngineClient` for a call pinned to one replica (one instance per call). The server's own
    instance (`replica=None`) only answers `warm_up` and `close`: conversations open on a replica."""

    def __init__(
        self,
        handle: DeploymentHandle[Any],
        pool: ReplicaPool,
        replica: str | None,
        *,
        info: Callable[[], EngineInfo],
        timeout_s: float,
        window: int,
    ) -> None:
        self._handle = handle
        self._info = info
        self._pool = pool
        self.replica = replica
        self._timeout_s = timeout_s
        self._window = window

    @property
    def info(self) -> EngineInfo:
        return self._info()

    def open(self, conversation_id: str) -> RemoteConversation:
        if self.replica is None:
            raise EngineError("A conversation needs a call pinned to an engine replica.")
        return RemoteConversation(conversation_id, self.replica)

    async def run(self, conv: RemoteConversation, fn: Callable[[OmniModel], T], *, deadline: float | None = None) -> T:
        """Ship `fn` (pickled by Ray) to run on the replica's engine thread with `conv` swapped in."""
        result, progress = await self.call(
            "run", fn, conv_id=conv.id, deadline_in_s=relative_deadline(deadline), **self._route(conv)
        )
        conv.update(progress)
        return result  # type: ignore[no-any-return]

    async def prefill(
        self, conv: RemoteConversation, msgs: list[dict[str, Any]], *, deadline: float | None = None, **kwargs: Any
    ) -> int:
        packed = await asyncio.to_thread(pack_msgs, msgs) if has_frames(msgs) else pack_msgs(msgs)
        tokens, progress = await self.call(
            "prefill", packed, kwargs, conv_id=conv.id, deadline_in_s=relative_deadline(deadline), **self._route(conv)
        )
        conv.update(progress)
        return int(tokens)

    async def reply(self, conv: RemoteConversation, **kwargs: Any) -> RemoteReply:
        stream_id = f"{conv.id}#{next(_stream_ids)}"
        first, progress = await self.call(
            "reply_open", kwargs, conv_id=conv.id, stream_id=stream_id, **self._route(conv)
        )
        conv.update(progress)
        return RemoteReply(self, conv, stream_id, self._window, first)

    async def release(self, conv: RemoteConversation) -> None:
        if conv.closed:
            return
        conv.closed = True
        if not self._lost():  # a lost replica took the conversation with it
            await self.best_effort("release", conv_id=conv.id, **self._route(conv))

    async def warm_up(self) -> None:
        """Nothing to do: each replica warms up before Serve sends it any request."""

    def close(self) -> None:
        """Nothing to do: the replicas belong to the Serve application, not to a call."""

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """One request to this call's replica, bounded in time, failures mapped to the session's terms."""
        if self._lost():
            raise _engine_lost()
        response: DeploymentResponse[Any] = getattr(self._handle, method).remote(*args, **kwargs)
        try:
            async with asyncio.timeout(self._timeout_s):
                return await response
        except TimeoutError:
            response.cancel()
            raise SessionEnded("The engine did not answer in time.", code="engine_timeout") from None
        except asyncio.CancelledError:
            response.cancel()
            raise
        except RayActorError as e:
            if self.replica is not None:
                self._pool.mark_lost(self.replica, type(e).__name__)
            raise _engine_lost() from e
        except RequestCancelledError as e:
            raise _engine_lost() from e
        except RayTaskError as e:
            cause = e.cause
            if isinstance(cause, OmniError):  # the engine's own error, with its code and message
                raise type(cause)(cause.message, code=cause.code) from None
            raise EngineError("The model failed while serving this session.") from e

    async def best_effort(self, method: str, **kwargs: Any) -> None:
        """A clean-up request (the call is ending anyway): a failure is logged, never raised, so the
        call still closes with the reason that ended it."""
        try:
            await self.call(method, **kwargs)
        except OmniError as e:
            logger.warning("engine replica %s: %s failed (%s)", self.replica, method, e.code)

    def _route(self, conv: RemoteConversation) -> dict[str, str]:
        return {"replica": conv.replica}

    def _lost(self) -> bool:
        replica = None if self.replica is None else self._pool.get(self.replica)
        return replica is None or replica.lost


class RemoteReply:
    """A reply streaming from the replica, at most `window` chunks requested ahead."""

    def __init__(
        self, client: ClusterClient, conv: RemoteConversation, stream_id: str, window: int, first: OutputChunk | None
    ) -> None:
        self._client, self._conv, self._stream_id = client, conv, stream_id
        self._window = window
        self._first = first  # came with reply_open
        self._pending: deque[asyncio.Task[tuple[OutputChunk | None, Progress | None]]] = deque()
        self._requested = 1
        self.finished = first is None
        self.step_s = 0.0  # model time of the latest chunk, from the replica's progress report

    async def next(self, *, deadline: float | None = None, read_ahead: bool = False) -> OutputChunk | None:
        """The next chunk. `read_ahead` is always in effect here: the window keeps chunks requested ahead."""
        if self.finished:
            return None
        while len(self._pending) < self._window:
            self._pending.append(asyncio.ensure_future(self._request(self._requested, deadline)))
            self._requested += 1
        if self._first is not None:
            first, self._first = self._first, None
            return first
        try:
            chunk, progress = await self._pending.popleft()
        except OmniError:
            self.finished = True  # the session ends on this error; drop what was asked ahead
            await self._drop_pending(cancel=True)
            raise
        before = self._conv.compute_s
        self._conv.update(progress)
        self.step_s = max(0.0, self._conv.compute_s - before)
        if chunk is None:
            self.finished = True
            await self._drop_pending(cancel=False)  # requests past the end are answered at once
        return chunk

    async def close(self) -> None:
        """Abandon the reply: drop what was requested ahead and close the generator on the replica."""
        if self.finished:
            return
        self.finished = True
        await self._drop_pending(cancel=True)
        if not self._conv.closed and not self._client._lost():
            await self._client.best_effort("reply_close", replica=self._conv.replica, stream_id=self._stream_id)

    async def _request(self, index: int, deadline: float | None) -> tuple[OutputChunk | None, Progress | None]:
        result: tuple[OutputChunk | None, Progress | None] = await self._client.call(
            "reply_next",
            replica=self._conv.replica,
            stream_id=self._stream_id,
            index=index,
            deadline_in_s=relative_deadline(deadline),
        )
        return result

    async def _drop_pending(self, *, cancel: bool) -> None:
        pending, self._pending = list(self._pending), deque()
        for task in pending:
            if cancel:
                task.cancel()
        if pending:
            await asyncio.wait(pending)
        for task in pending:
            if not task.cancelled():
                task.exception()  # retrieved and dropped: a request asked ahead of a reply that has ended


def _engine_lost() -> SessionEnded:
    return SessionEnded("The engine serving this call was lost; please call again.", code="engine_lost")
