"""The gateway side of cluster mode: the replica watch, and the cluster-aware session manager.

`ClusterEngines` is what `OmniServer` gets instead of a loaded engine. While its `watching()` block
runs it keeps the `ReplicaPool` true: every `discover_s` it asks all replicas to describe themselves
(new ones join, e.g. a replacement Serve started after a crash), and it holds one heartbeat stream
per replica; the stream breaking (at once when the replica's process dies) or falling silent for
`silence_s` marks that replica lost, which ends its calls with `engine_lost` even when they are idle
(nothing is prefilled in silence).

`ClusterSessionManager` is the ordinary `SessionManager` with two changes: a call is pinned to a
replica when it is created, and the admission queue's capacity follows the sum of the live
replicas' slots.

Must not import: websockets, aiortc, omni_server.transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from ray.exceptions import RayError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from omni_server.cluster.client import ClusterClient
from omni_server.cluster.pool import ReplicaPool
from omni_server.cluster.replica import ReplicaDescription
from omni_server.config import Settings
from omni_server.engine.base import EngineInfo
from omni_server.engine.client import EngineClient
from omni_server.errors import EngineError
from omni_server.library.store import VoiceStore
from omni_server.media.vad import SileroVadModel
from omni_server.session.manager import SessionManager

logger = logging.getLogger(__name__)
DISCOVER_ATTEMPTS = 50  # x 0.1 s at start-up, for a fresh handle to see every replica


class ClusterEngines:
    """Engine replicas on Ray Serve, as one `OmniServer` sees them."""

    def __init__(
        self,
        handle: DeploymentHandle[Any],
        settings: Settings,
        *,
        heartbeat_s: float = 0.5,
        silence_s: float = 10.0,
        discover_s: float = 2.0,
    ) -> None:
        self.handle = handle
        self.settings = settings
        self.pool = ReplicaPool()
        # A dead replica breaks its stream at once (Ray reports the actor's death); silence only catches
        # a replica that lives but hangs, so it may take long enough never to fire on a busy machine.
        self.heartbeat_s, self.silence_s, self.discover_s = heartbeat_s, silence_s, discover_s
        self._info: EngineInfo | None = None
        self._watched: set[str] = set()

    @property
    def info(self) -> EngineInfo:
        if self._info is None:
            raise EngineError("No engine replica has been seen yet.")
        return self._info

    def client(self, replica: str | None) -> ClusterClient:
        s = self.settings
        return ClusterClient(
            self.handle,
            self.pool,
            replica,
            info=lambda: self.info,
            timeout_s=s.cluster_call_timeout_s,
            window=s.cluster_reply_window,
        )

    def session_manager(
        self, settings: Settings, vad_model: SileroVadModel, voices: VoiceStore
    ) -> ClusterSessionManager:
        return ClusterSessionManager(settings, self, vad_model, voices)

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[ClusterEngines]:
        """Find the replicas, then keep watching them until the block ends.

        A fresh handle learns the replica set from Serve's controller a moment after its first use, so
        the first answers may miss some: ask again (briefly) until all `--replicas` have answered."""
        for _ in range(DISCOVER_ATTEMPTS):
            await self._discover()
            if len(self.pool.live()) >= self.settings.replicas:
                break
            await asyncio.sleep(0.1)
        if not self.pool.live():  # the deploy waited for them: none answering is a real failure
            raise EngineError("No engine replica answered; see `serve status`.")
        async with asyncio.TaskGroup() as tg:
            watch = tg.create_task(self._watch_loop(tg), name="cluster-watch")
            try:
                yield self
            finally:
                watch.cancel()

    async def _watch_loop(self, tg: asyncio.TaskGroup) -> None:
        heartbeats: dict[str, asyncio.Task[None]] = {}
        try:
            while True:
                for replica in self.pool.live():
                    if replica.id not in heartbeats:
                        heartbeats[replica.id] = tg.create_task(self._heartbeat(replica.id), name=f"hb-{replica.id}")
                await asyncio.sleep(self.discover_s)
                await self._discover()
        finally:
            for task in heartbeats.values():
                task.cancel()

    async def _discover(self) -> bool:
        """Ask every replica Serve knows to describe itself; True when at least one answered."""
        try:
            answers = await self.handle.broadcast("describe").results_async(
                timeout_s=self.settings.cluster_call_timeout_s, return_exceptions=True
            )
        except (RayError, TimeoutError) as e:
            logger.warning("cannot list engine replicas: %s", type(e).__name__)
            return False
        found = [a for a in answers if isinstance(a, ReplicaDescription)]
        for description in found:
            self._info = self._info or description.info
            self.pool.add(description.replica_id, description.capacity)
        return bool(found)

    async def _heartbeat(self, replica_id: str) -> None:
        """Follow the replica's heartbeat stream; its end, an error or silence means the replica is gone."""
        stream = self.handle.options(stream=True).heartbeat.remote(replica=replica_id, interval_s=self.heartbeat_s)
        assert isinstance(stream, DeploymentResponseGenerator)
        why = "heartbeat ended"
        try:
            while True:
                async with asyncio.timeout(self.silence_s):
                    await stream.__anext__()
        except StopAsyncIteration:
            pass
        except TimeoutError:
            why = "heartbeat silent"
        except Exception as e:  # whatever broke the stream, this replica can no longer be trusted with calls
            why = type(e).__name__
        finally:
            stream.cancel()
        self.pool.mark_lost(replica_id, why)


class ClusterSessionManager(SessionManager):
    """Sessions pinned to replicas, admitted against the whole cluster's capacity."""

    def __init__(
        self, settings: Settings, engines: ClusterEngines, vad_model: SileroVadModel, voices: VoiceStore
    ) -> None:
        super().__init__(settings, engines.client(None), vad_model, voices)
        self.engines = engines
        self.admission.resize(engines.pool.capacity)
        engines.pool.on_capacity = self.admission.resize

    def engine_for(self, call_id: str) -> EngineClient[Any]:
        """Pin the call (or reading) to the replica with the most free slots, for its whole life."""
        sessions = self.sessions

        def on_lost() -> None:
            session = sessions.get(call_id)
            if session is not None:
                session.close("engine_lost")

        replica = self.engines.pool.attach(call_id, on_lost)
        logger.info("call pinned to engine replica %s", replica, extra={"session_id": call_id})
        return self.engines.client(replica)

    def forget(self, call_id: str) -> None:
        super().forget(call_id)
        self.engines.pool.detach(call_id)

    def snapshot(self) -> dict[str, Any]:
        replicas = {r.id: {"calls": len(r.calls), "capacity": r.capacity} for r in self.engines.pool.live()}
        return {**super().snapshot(), "replicas": replicas}
