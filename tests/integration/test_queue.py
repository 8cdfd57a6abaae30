"""Admission over the realtime WebSocket: the KV budget queues a caller, hanging up admits it, a full queue refuses."""

from __future__ import annotations

from pathlib import Path

from omni_server.app import OmniServer
from omni_server.engine.tiny import build_tiny_engine
from tests.conftest import server_settings
from tests.integration.realtime_client import RawClient


async def test_kv_budget_queues_then_admits_and_full_queue_refuses(tmp_path: Path) -> None:
    """With room in the KV budget for one call: the second waits (queued, position 1), the third is refused."""
    engine = build_tiny_engine()
    call_gb = 8192 * engine.info.kv_bytes_per_token / 1e9  # one call at the default max_context_tokens
    settings = server_settings(tmp_path, max_sessions=4, max_queue=1, kv_budget_gb=1.5 * call_gb)
    async with OmniServer(settings, engine) as server:
        first = await RawClient.connect(server)
        await first.start()
        assert server.manager.admission.kv_reserved_bytes == server.manager.call_kv_bytes > 0
        second = await RawClient.connect(server)
        queued = await second.until("session.queued")
        assert queued["position"] == 1 and queued["queue_length"] == 1 and queued["estimated_wait_s"] > 0
        third = await RawClient.connect(server)
        error = await third.until("error")
        assert error["error"]["code"] == "queue_full"
        assert (await third.until("session.closed"))["reason"] == "queue_full"
        await first.send("session.close", reason="stopped")
        await first.until("session.closed")
        created = await second.start()  # session.queue_done, then a normal call
        assert created["session_id"].startswith("rt_")
        snapshot = server.manager.snapshot()
        assert snapshot["active"] == 1 and snapshot["queued"] == 0
        assert snapshot["kv_reserved_bytes"] == server.manager.call_kv_bytes
        await second.close()
        for client in (first, third):
            await client.close()
