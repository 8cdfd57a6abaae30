"""Serve request routing that pins: a request goes to the replica it names, or nowhere.

A call's KV cache lives on one replica, so every request of that call must reach that replica; Serve's
default router balances load per request and its multiplexing and consistent-hash routers fall back
to other replicas under load, which would land a unit on a replica that has never seen the call.
This router runs in the gateway process (Serve builds it inside the deployment handle) and reads the
`replica` keyword every engine method takes. When that replica is gone it offers no candidate; the
gateway's own timeout and its heartbeat watch end such calls (`engine_lost`) within seconds.
Requests that name no replica (`describe`) may go anywhere.

Must not import: websockets, aiortc, omni_server.session, omni_server.transport.
"""

from __future__ import annotations

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica


class PinnedReplicaRouter(RequestRouter):
    """Routes each request to the replica whose id is its `replica` keyword argument."""

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        target = None if pending_request is None else pending_request.kwargs.get("replica")
        if target is None:
            return [candidate_replicas]
        return [[r for r in candidate_replicas if r.replica_id.unique_id == target]]
