"""Admission: call slots, the KV memory budget, the FIFO queue, wait estimates, refusals and freeing."""

from __future__ import annotations

import asyncio

import pytest

from omni_server.errors import SessionRefused
from omni_server.session.admission import PRIOR_HOLD_S, Admission
from tests.conftest import timeout

GB = 10**9


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Caller:
    """One caller's view: every `session.queued` it was told, and whether it holds a slot."""

    def __init__(self, admission: Admission, kv_bytes: int = 0) -> None:
        self.admission, self.kv_bytes = admission, kv_bytes
        self.queued: list[tuple[int, float, int]] = []
        self.told = asyncio.Event()
        self.admitted = asyncio.Event()
        self.hang_up = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def on_queued(self, position: int, wait_s: float, length: int) -> None:
        self.queued.append((position, wait_s, length))
        self.told.set()

    async def call(self) -> None:
        async with self.admission.slot(self.on_queued, kv_bytes=self.kv_bytes):
            self.admitted.set()
            await self.hang_up.wait()

    def start(self, tg: asyncio.TaskGroup) -> Caller:
        self.task = tg.create_task(self.call())
        return self

    async def wait_told(self, count: int = 1) -> None:
        async with asyncio.timeout(timeout(5)):
            while len(self.queued) < count:
                self.told.clear()
                await self.told.wait()


async def admitted(*calls: Caller) -> None:
    async with asyncio.timeout(timeout(5)):
        for c in calls:
            await c.admitted.wait()


async def test_slots_then_queue_then_queue_done() -> None:
    """Beyond max_active a caller is queued with its position; a hang-up admits it in the same step."""
    admission = Admission(2, 4, clock=Clock())
    async with asyncio.TaskGroup() as tg:
        a, b = Caller(admission).start(tg), Caller(admission).start(tg)
        await admitted(a, b)
        c, d = Caller(admission).start(tg), Caller(admission).start(tg)
        await c.wait_told()
        await d.wait_told()
        assert (c.queued[0][0], d.queued[0][0]) == (1, 2)
        assert d.queued[0][2] == 2 and admission.queued == 2
        a.hang_up.set()
        await admitted(c)
        assert admission.active == 2 and admission.queued == 1 and not d.admitted.is_set()
        for x in (b, c, d):
            x.hang_up.set()
    assert (admission.active, admission.queued) == (0, 0)


async def test_kv_budget_limits_calls_and_is_freed_at_once() -> None:
    """With room for many slots, the KV budget admits only what fits; hanging up returns the bytes."""
    admission = Admission(8, 4, kv_budget_bytes=1 * GB, clock=Clock())
    async with asyncio.TaskGroup() as tg:
        a, b = Caller(admission, GB // 2).start(tg), Caller(admission, GB // 2).start(tg)
        await admitted(a, b)
        assert admission.kv_reserved_bytes == GB
        c = Caller(admission, GB // 2).start(tg)
        await c.wait_told()
        assert c.queued[0][0] == 1 and admission.active == 2
        b.hang_up.set()
        await admitted(c)
        assert admission.kv_reserved_bytes == GB
        a.hang_up.set()
        c.hang_up.set()
    assert (admission.active, admission.kv_reserved_bytes) == (0, 0)


async def test_full_queue_and_oversized_calls_are_refused_with_reasons() -> None:
    """A full queue refuses with queue_full; a call larger than the whole budget with kv_budget_exceeded."""
    admission = Admission(1, 1, kv_budget_bytes=GB, clock=Clock())
    with pytest.raises(SessionRefused) as too_big:
        await Caller(admission, 2 * GB).call()
    assert too_big.value.code == "kv_budget_exceeded" and "memory" in too_big.value.message
    async with asyncio.TaskGroup() as tg:
        a = Caller(admission).start(tg)
        await admitted(a)
        b = Caller(admission).start(tg)
        await b.wait_told()
        with pytest.raises(SessionRefused) as full:
            await Caller(admission).call()
        assert full.value.code == "queue_full" and "queue is full" in full.value.message
        a.hang_up.set()
        await admitted(b)
        b.hang_up.set()
    assert (admission.active, admission.queued) == (0, 0)


async def test_leaving_the_queue_frees_the_place_and_moves_others_up() -> None:
    """A caller who gives up while queued leaves no trace; the one behind becomes first, then is admitted."""
    admission = Admission(1, 4, clock=Clock(), update_s=0.01)
    async with asyncio.TaskGroup() as tg:
        a = Caller(admission).start(tg)
        await admitted(a)
        leaver, stayer = Caller(admission).start(tg), Caller(admission).start(tg)
        await stayer.wait_told()
        assert stayer.queued[-1][0] == 2
        assert leaver.task is not None
        leaver.task.cancel()
        await stayer.wait_told(len(stayer.queued) + 1)  # the next update shows the new position
        assert stayer.queued[-1][:3:2] == (1, 1) and admission.queued == 1
        a.hang_up.set()
        await admitted(stayer)
        stayer.hang_up.set()
    assert (admission.active, admission.queued) == (0, 0)


async def test_large_reservation_leaving_the_head_lets_smaller_ones_in() -> None:
    """FIFO holds small calls behind a large one; when the large one leaves, those that fit are admitted."""
    admission = Admission(8, 4, kv_budget_bytes=GB, clock=Clock())
    async with asyncio.TaskGroup() as tg:
        a = Caller(admission, GB // 2).start(tg)
        await admitted(a)
        big, small = Caller(admission, GB).start(tg), Caller(admission, GB // 2).start(tg)
        await small.wait_told()
        assert big.task is not None
        big.task.cancel()
        await admitted(small)
        assert admission.kv_reserved_bytes == GB and admission.queued == 0
        a.hang_up.set()
        small.hang_up.set()


async def test_wait_estimate_is_measured_and_updated_while_waiting() -> None:
    """Estimates start from the prior, learn from finished calls, and fall as the live calls age."""
    clock = Clock()
    admission = Admission(1, 4, clock=clock, update_s=0.01)
    async with asyncio.TaskGroup() as tg:
        first = Caller(admission).start(tg)
        await admitted(first)
        clock.now += 20.0
        first.hang_up.set()
    # One finished call of 20 s pulls the mean from the prior towards 20 s.
    mean = PRIOR_HOLD_S + 0.3 * (20.0 - PRIOR_HOLD_S)
    async with asyncio.TaskGroup() as tg:
        a = Caller(admission).start(tg)
        await admitted(a)
        b, c = Caller(admission).start(tg), Caller(admission).start(tg)
        await c.wait_told()
        assert b.queued[0][1] == pytest.approx(mean, abs=0.1)
        assert c.queued[0][1] == pytest.approx(2 * mean, abs=0.1)  # a second round of the one slot
        clock.now += 30.0
        await b.wait_told(len(b.queued) + 1)
        assert b.queued[-1][1] == pytest.approx(mean - 30.0, abs=0.1)
        for x in (a, b, c):
            x.hang_up.set()


async def test_close_refuses_waiting_and_new_callers() -> None:
    """At shutdown queued callers get server_shutdown, and so does anyone arriving later."""
    admission = Admission(1, 4, clock=Clock())
    async with asyncio.TaskGroup() as tg:
        a = Caller(admission).start(tg)
        await admitted(a)
        b = Caller(admission)
        refusals: list[SessionRefused] = []

        async def wait_in_queue() -> None:
            try:
                await b.call()
            except SessionRefused as e:
                refusals.append(e)

        waiting = tg.create_task(wait_in_queue())
        await b.wait_told()
        admission.close()
        await asyncio.wait_for(waiting, timeout(5))
        assert [r.code for r in refusals] == ["server_shutdown"] and not b.admitted.is_set()
        a.hang_up.set()
    with pytest.raises(SessionRefused):
        await Caller(admission).call()
    assert (admission.active, admission.queued) == (0, 0)
