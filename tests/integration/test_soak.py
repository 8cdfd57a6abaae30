"""Soak: several callers take turns and hang up, again and again, for a bounded time; memory stays flat.

20 s in CI; set OMNI_SOAK_S (seconds) for a longer run. The process's RSS and its count of live Python
objects are sampled once the first round of calls has warmed every cache, and compared at the end;
the server must also be back to empty (no calls, no queued callers, no per-address counts).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time

import numpy as np

from omni_server.app import OmniServer
from tests.conftest import timeout
from tests.integration.realtime_client import RawClient

logger = logging.getLogger(__name__)
SOAK_S = float(os.environ.get("OMNI_SOAK_S", "20"))
CALLERS = 4
TURNS_PER_CALL = 3
RSS_GROWTH_LIMIT_MB = 40.0
OBJECT_GROWTH_LIMIT = 20_000


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def live_objects() -> int:
    gc.collect()
    return len(gc.get_objects())


async def caller(server: OmniServer, seed: int, until: float) -> int:
    """Calls of a few manual turns each, until `until`; returns the replies that completed."""
    noise = np.random.default_rng(seed).uniform(-0.3, 0.3, 16000).astype(np.float32)
    completed = 0
    while time.monotonic() < until:
        client = await RawClient.connect(server)
        await client.start(turn_detection={"type": "none"})
        for _ in range(TURNS_PER_CALL):
            await client.append(noise)
            await client.send("input.commit")
            done = await client.until("response.done", limit_s=60)
            completed += done["response"]["status"] == "completed"
        await client.send("session.close")
        await client.until("session.closed")
        await client.close()
    return completed


async def test_memory_stays_flat_over_many_calls(server: OmniServer) -> None:
    """RSS and live objects after warm-up grow by no more than a small bound; the server ends empty."""
    warm_until = time.monotonic() + max(4.0, SOAK_S / 4)
    await asyncio.gather(*(caller(server, i, warm_until) for i in range(CALLERS)))
    rss_before, objects_before = rss_mb(), live_objects()

    until = time.monotonic() + SOAK_S
    async with asyncio.timeout(SOAK_S + timeout(120)):
        completed = await asyncio.gather(*(caller(server, i, until) for i in range(CALLERS)))
    rss_after, objects_after = rss_mb(), live_objects()
    logger.info(
        "soak %.0f s: %d replies; RSS %.1f -> %.1f MB; live objects %d -> %d",
        SOAK_S,
        sum(completed),
        rss_before,
        rss_after,
        objects_before,
        objects_after,
    )

    assert sum(completed) >= CALLERS * TURNS_PER_CALL
    assert rss_after - rss_before < RSS_GROWTH_LIMIT_MB, (rss_before, rss_after)
    assert objects_after - objects_before < OBJECT_GROWTH_LIMIT, (objects_before, objects_after)
    assert not server.manager.sessions
    assert server.manager.admission.active == 0 and server.manager.admission.queued == 0
    await asyncio.sleep(0)  # let the last sockets' connection_lost run
    assert not server.guard.open
