"""An engine replica: one loaded model and its `EngineWorker`, as a Ray Serve deployment.

Each replica is a Ray actor that Serve places (one GPU each for the real model, a little CPU for the
tiny one), health-checks and restarts. It holds the conversations of the calls pinned to it: their KV
caches live here and never move. Every method names the replica it was meant for, so a request that
reached the wrong one fails instead of silently starting a fresh conversation.

Replies are pulled chunk by chunk (`reply_open` answers with the first, then `reply_next`, numbered):
the gateway keeps a small window of requests in flight, and a request is answered only in order, so
the engine works at most one chunk ahead per window slot — bounded, and barge-in drops at most that.

Must not import: websockets, aiortc, omni_server.session, omni_server.transport.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from ray import serve
from ray.serve.config import RequestRouterConfig

from omni_server.cluster.wire import Progress, absolute_deadline, unpack_msgs
from omni_server.config import Settings
from omni_server.engine.base import EngineInfo, OmniModel, OutputChunk
from omni_server.engine.loader import load_engine
from omni_server.engine.worker import Conversation, EngineWorker, ReplyStream
from omni_server.errors import EngineError

logger = logging.getLogger(__name__)
APP_NAME = "omni-engines"
ROUTER_CLASS = "omni_server.cluster.routing.PinnedReplicaRouter"
# Requests a replica accepts at once. The engine's own EDF queue orders the work; Serve must never
# refuse a pinned request (there is no other replica that could take it).
MAX_ONGOING_REQUESTS = 1000
SERVED_HISTORY = 256  # conversations remembered in `describe().served`


@dataclass(frozen=True)
class ReplicaDescription:
    replica_id: str
    actor_name: str  # the Ray actor (namespace "serve"), for `ray kill`-style operations and tests
    info: EngineInfo
    capacity: int  # calls this replica's model serves at once (--max-sessions)
    conversations: int
    served: dict[str, int]  # recent conversation ids -> engine requests served here (ids only, no content)


@dataclass
class _Reply:
    stream: ReplyStream
    conv: Conversation
    next_index: int
    turn: asyncio.Condition


class WrongReplica(EngineError):
    code = "engine_lost"


class EngineReplica:
    """The replica's user code: every method is a remote call the gateway makes."""

    async def __init__(self, settings: Settings) -> None:  # type: ignore[misc]  # Serve awaits async __init__
        engine = await asyncio.to_thread(load_engine, settings)
        self._worker = EngineWorker(engine)
        self._info = engine.info
        self._capacity = settings.max_sessions
        replica_id = serve.get_replica_context().replica_id
        self._id, self._actor_name = replica_id.unique_id, replica_id.to_full_id_str()
        self._served: OrderedDict[str, int] = OrderedDict()
        self._convs: dict[str, Conversation] = {}
        self._replies: dict[str, _Reply] = {}
        if settings.warm_up:
            await self._worker.warm_up()  # Serve routes nothing here until __init__ returns
        logger.info("engine replica %s ready: %s", self._id, engine.info.banner())

    async def describe(self) -> ReplicaDescription:
        served = dict(self._served)
        return ReplicaDescription(self._id, self._actor_name, self._info, self._capacity, len(self._convs), served)

    async def heartbeat(self, *, replica: str, interval_s: float) -> AsyncIterator[int]:
        """A stream that beats while this replica lives: the gateway learns of its death at once."""
        self._check(replica)
        beat = 0
        while True:
            yield beat
            beat += 1
            await asyncio.sleep(interval_s)

    async def run(
        self, fn: Callable[[OmniModel], Any], *, replica: str, conv_id: str, deadline_in_s: float | None
    ) -> tuple[Any, Progress]:
        conv = self._conv(replica, conv_id)
        result = await self._worker.run(conv, fn, deadline=absolute_deadline(deadline_in_s))
        return result, _progress(conv)

    async def prefill(
        self,
        msgs: list[dict[str, Any]],
        kwargs: dict[str, Any],
        *,
        replica: str,
        conv_id: str,
        deadline_in_s: float | None,
    ) -> tuple[int, Progress]:
        conv = self._conv(replica, conv_id)
        deadline = absolute_deadline(deadline_in_s)
        tokens = await self._worker.prefill(conv, unpack_msgs(msgs), deadline=deadline, **kwargs)
        return tokens, _progress(conv)

    async def reply_open(
        self, kwargs: dict[str, Any], *, replica: str, conv_id: str, stream_id: str
    ) -> tuple[OutputChunk | None, Progress]:
        """Start a reply and return its first chunk at once: one round trip less to first audio."""
        conv = self._conv(replica, conv_id)
        stream = await self._worker.reply(conv, **kwargs)
        first = await stream.next()  # due now, as the session's first chunk is
        if first is not None:
            self._replies[stream_id] = _Reply(stream, conv, 1, asyncio.Condition())
        return first, _progress(conv)

    async def reply_next(
        self, *, replica: str, stream_id: str, index: int, deadline_in_s: float | None
    ) -> tuple[OutputChunk | None, Progress | None]:
        """Chunk number `index` of a reply (None once it has ended), answered strictly in order."""
        self._check(replica)
        reply = self._replies.get(stream_id)
        if reply is None:  # closed or finished: prefetched requests past the end land here
            return None, None
        async with reply.turn:
            await reply.turn.wait_for(lambda: reply.next_index == index)
            chunk = await reply.stream.next(deadline=absolute_deadline(deadline_in_s))
            reply.next_index += 1
            reply.turn.notify_all()
        if chunk is None:
            self._replies.pop(stream_id, None)
        return chunk, _progress(reply.conv)

    async def reply_close(self, *, replica: str, stream_id: str) -> None:
        self._check(replica)
        reply = self._replies.pop(stream_id, None)
        if reply is not None:
            await reply.stream.close()

    async def release(self, *, replica: str, conv_id: str) -> None:
        self._check(replica)
        conv = self._convs.pop(conv_id, None)
        if conv is None:
            return
        for stream_id in [k for k, reply in self._replies.items() if reply.conv is conv]:
            del self._replies[stream_id]  # a reply left open (its gateway timed out): never resumed
        await self._worker.release(conv)

    def _conv(self, replica: str, conv_id: str) -> Conversation:
        self._check(replica)
        self._served[conv_id] = self._served.pop(conv_id, 0) + 1
        if len(self._served) > SERVED_HISTORY:
            self._served.popitem(last=False)
        conv = self._convs.get(conv_id)
        if conv is None:
            conv = self._convs[conv_id] = self._worker.open(conv_id)
        return conv

    def _check(self, replica: str) -> None:
        if replica != self._id:
            raise WrongReplica("This call's engine is no longer available.")


def _progress(conv: Conversation) -> Progress:
    return Progress(conv.context_tokens, conv.compute_s)


def replica_gpus(settings: Settings, cluster_gpus: float) -> float:
    """GPUs per replica: `--replica-gpus`, else one for the real model and none for the tiny one
    (`--engine auto` means the real model when the cluster has GPUs, as on one machine)."""
    if settings.replica_gpus is not None:
        return settings.replica_gpus
    if settings.engine == "auto":
        return 1.0 if cluster_gpus > 0 else 0.0
    return 1.0 if settings.engine == "minicpmo" else 0.0


def engine_app(settings: Settings, *, gpus: float) -> serve.Application:
    """The Serve application: `--replicas` copies of the engine, each reached through the pinning router."""
    deployment = serve.deployment(
        name="EngineReplica",
        num_replicas=settings.replicas,
        max_ongoing_requests=MAX_ONGOING_REQUESTS,
        ray_actor_options={"num_cpus": settings.replica_cpus, "num_gpus": gpus},
        # Ray's pydantic field takes a class or its import path; mypy sees its v1 annotation wrongly.
        request_router_config=RequestRouterConfig(request_router_class=ROUTER_CLASS),  # type: ignore[arg-type]
        health_check_period_s=2.0,
        health_check_timeout_s=10.0,
    )(EngineReplica)
    return deployment.bind(settings)
