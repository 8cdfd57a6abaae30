"""The gateway's replica pool: freest-first placement, pinning, loss, and capacity for admission."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from omni_server.cluster.pool import ReplicaPool
from omni_server.errors import SessionRefused


def test_new_calls_go_to_the_replica_with_most_free_slots() -> None:
    """Placement fills replicas evenly; a full cluster refuses with no_engine."""
    pool = ReplicaPool()
    pool.add("a", 2)
    pool.add("b", 3)
    placed = [pool.attach(f"c{i}", lambda: None) for i in range(5)]
    assert placed == ["b", "a", "b", "a", "b"]
    with pytest.raises(SessionRefused) as info:
        pool.attach("c5", lambda: None)
    assert info.value.code == "no_engine"
    pool.detach("c0")
    assert pool.attach("c6", lambda: None) == "b"


def test_losing_a_replica_tells_only_its_calls_and_shrinks_capacity() -> None:
    """mark_lost calls on_lost for each call on that replica, once, and reports the new capacity."""
    capacities: list[int] = []
    pool = ReplicaPool(on_capacity=capacities.append)
    pool.add("a", 2)
    pool.add("b", 2)
    told: list[str] = []
    for call in ("x", "y", "z"):
        pool.attach(call, lambda call=call: told.append(call))
    victim = pool.replica_of("x")
    pool.mark_lost(victim, "test")
    pool.mark_lost(victim, "again")  # a second report changes nothing
    assert sorted(told) == sorted(c for c in ("x", "y", "z") if pool.replica_of(c) == victim)
    assert capacities == [2, 4, 2]
    assert [r.id for r in pool.live()] != [victim] and pool.capacity == 2
    assert pool.add(victim, 2) is False  # a lost replica does not come back under the same id


@given(st.lists(st.tuples(st.sampled_from(["attach", "detach", "lose"]), st.integers(0, 7)), max_size=60))
def test_pool_never_overfills_a_replica(ops: list[tuple[str, int]]) -> None:
    """Whatever happens, no live replica holds more calls than its capacity, and capacity sums live ones."""
    pool = ReplicaPool()
    for name in ("a", "b", "c"):
        pool.add(name, 2)
    for op, n in ops:
        if op == "attach":
            try:
                pool.attach(f"call{n}-{len(ops)}", lambda: None)
            except SessionRefused:
                assert all(r.free == 0 for r in pool.live())
        elif op == "detach":
            pool.detach(f"call{n}-{len(ops)}")
        else:
            pool.mark_lost("abc"[n % 3], "test")
        assert all(0 <= r.free <= r.capacity for r in pool.live())
        assert pool.capacity == sum(r.capacity for r in pool.live())
