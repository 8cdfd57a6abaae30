"""The gateway's view of the engine replicas: who is alive, how full, and which calls each one holds.

A new call goes to the live replica with the most free call slots (ties: the one seen first). A call
stays on its replica for its whole life. When a replica is lost, it is marked so at once: later calls
to it fail fast, and every call pinned to it hears `on_lost` (the session manager closes it with
`engine_lost`). Capacity is the sum of the live replicas' slots; a change is reported to `on_capacity`
so the admission queue (cluster-wide) grows and shrinks with the replicas.

Plain state, no I/O: `gateway.py` feeds it what the replicas say.

Must not import: ray, websockets, aiortc, omni_server.transport.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from omni_server.errors import SessionRefused

logger = logging.getLogger(__name__)


@dataclass
class Replica:
    id: str
    capacity: int
    calls: dict[str, Callable[[], None]] = field(default_factory=dict)  # call id -> its on_lost
    lost: bool = False

    @property
    def free(self) -> int:
        return self.capacity - len(self.calls)


class ReplicaPool:
    """Live replicas, their pinned calls, and the cluster's total capacity."""

    def __init__(self, on_capacity: Callable[[int], None] = lambda _: None) -> None:
        self._replicas: dict[str, Replica] = {}
        self._call_replica: dict[str, str] = {}
        self.on_capacity = on_capacity

    @property
    def capacity(self) -> int:
        return sum(r.capacity for r in self._replicas.values() if not r.lost)

    def live(self) -> list[Replica]:
        return [r for r in self._replicas.values() if not r.lost]

    def get(self, replica_id: str) -> Replica | None:
        return self._replicas.get(replica_id)

    def replica_of(self, call_id: str) -> str | None:
        return self._call_replica.get(call_id)

    def add(self, replica_id: str, capacity: int) -> bool:
        """A replica answered `describe`; returns True when it is new."""
        if replica_id in self._replicas:
            return False
        self._replicas[replica_id] = Replica(replica_id, capacity)
        logger.info("engine replica %s joined (%d call slots)", replica_id, capacity)
        self.on_capacity(self.capacity)
        return True

    def attach(self, call_id: str, on_lost: Callable[[], None]) -> str:
        """Pin a new call to the live replica with the most free slots; returns its id."""
        candidates = [r for r in self.live() if r.free > 0]
        if not candidates:
            raise SessionRefused("No engine replica has a free call slot; try again shortly.", code="no_engine")
        replica = max(candidates, key=lambda r: r.free)  # max() keeps the first of equals
        replica.calls[call_id] = on_lost
        self._call_replica[call_id] = replica.id
        return replica.id

    def detach(self, call_id: str) -> None:
        replica_id = self._call_replica.pop(call_id, None)
        replica = None if replica_id is None else self._replicas.get(replica_id)
        if replica is not None:
            replica.calls.pop(call_id, None)

    def mark_lost(self, replica_id: str, why: str) -> None:
        """The replica is gone: forget it and tell each of its calls (once)."""
        replica = self._replicas.get(replica_id)
        if replica is None or replica.lost:
            return
        replica.lost = True
        logger.warning("engine replica %s lost (%s): ending its %d calls", replica_id, why, len(replica.calls))
        for on_lost in list(replica.calls.values()):
            on_lost()
        self.on_capacity(self.capacity)
