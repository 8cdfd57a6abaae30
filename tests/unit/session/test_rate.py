"""The real-time budget: a burst at once, then one second of input per second, tiny floods bounded."""

from __future__ import annotations

import pytest

from omni_server.session.rate import RealTimeBudget


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_real_time() -> None:
    """10 s go at once; the 11th second waits for a second of wall time; real-time pacing is never refused."""
    clock = Clock()
    budget = RealTimeBudget(10.0, clock=clock)
    assert all(budget.take(1.0) for _ in range(10))
    assert not budget.take(1.0)
    clock.now += 1.0
    assert budget.take(1.0) and not budget.take(0.1)
    for _ in range(1000):  # 20 ms pieces every 20 ms: real time, forever
        clock.now += 0.02
        assert budget.take(0.02)


def test_faster_than_real_time_is_refused_beyond_the_burst() -> None:
    """Back-to-back 5 s appends every second: the burst covers two, then one in five is accepted."""
    clock = Clock()
    budget = RealTimeBudget(10.0, clock=clock)
    accepted = []
    for _ in range(60):
        accepted.append(budget.take(5.0))
        clock.now += 1.0
    assert accepted[:2] == [True, True]
    assert sum(accepted) * 5.0 <= 10.0 + 60.0  # never more than the burst plus the wall time


def test_a_flood_of_tiny_messages_is_charged_a_minimum() -> None:
    """Empty or 1-sample messages each cost 20 ms: 500 fit in a 10 s burst, the 501st does not."""
    budget = RealTimeBudget(10.0, clock=Clock())
    assert sum(budget.take(1 / 16000) for _ in range(600)) == 500
    assert budget.available_s == pytest.approx(0.0)


def test_a_refused_message_costs_nothing_and_the_bucket_never_overfills() -> None:
    """A refusal leaves the budget as it was; an idle hour still allows only one burst."""
    clock = Clock()
    budget = RealTimeBudget(2.0, clock=clock)
    assert not budget.take(3.0)
    assert budget.available_s == pytest.approx(2.0)
    clock.now += 3600
    assert budget.available_s == pytest.approx(2.0)
    with pytest.raises(ValueError):
        RealTimeBudget(0.0)
