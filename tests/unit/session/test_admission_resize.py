"""Admission capacity that follows the cluster: growing admits waiters, shrinking lets slots vanish."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from omni_server.session.manager import Admission
from tests.conftest import timeout


async def _nothing(position: int, wait_s: float, length: int) -> None:
    return None


async def test_growing_capacity_admits_waiting_callers_and_shrinking_retires_slots() -> None:
    """Resize up hands new slots to the queue in order; after a resize down, released slots are not passed on."""
    admission = Admission(1, 4, update_s=0.01)
    held = [asyncio.Event() for _ in range(3)]
    admitted: list[int] = []
    changed = asyncio.Event()

    async def caller(i: int) -> None:
        async with admission.slot(_nothing):
            admitted.append(i)
            changed.set()
            await held[i].wait()
        changed.set()

    async def until(predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(timeout(5)):
            while not predicate():
                changed.clear()
                await changed.wait()

    async with asyncio.TaskGroup() as tg:
        for i in range(3):
            tg.create_task(caller(i))
        await until(lambda: admitted == [0] and admission.queued == 2)
        admission.resize(2)
        await until(lambda: admitted == [0, 1])
        assert admission.active == 2
        admission.resize(1)  # a replica was lost: the next slot freed is not handed on
        held[0].set()
        await until(lambda: admission.active == 1)
        assert admitted == [0, 1] and admission.queued == 1
        held[1].set()
        await until(lambda: admitted == [0, 1, 2])
        held[2].set()
    assert admission.active == 0
    admission.resize(0)
    assert admission.estimate_wait_s(1) >= 0  # no division by zero when no replica is left
