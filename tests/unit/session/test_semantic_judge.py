"""Smart Turn decisions: one at a time on one thread for every call, on one core when they come back to
back, and skipped once they could no longer end a turn before its silence window does."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import numpy.typing as npt

from omni_server.session.turn_end import SemanticJudge

AUDIO = np.zeros(16_000, dtype=np.float32)


class SlowModel:
    """A judge's model that takes `cost_s` a decision and records how many ran at once."""

    def __init__(self, cost_s: float, probability: float = 0.9) -> None:
        self.cost_s, self.probability = cost_s, probability
        self.running = self.most = self.calls = 0
        self.crowded: list[bool] = []
        self._lock = threading.Lock()

    def complete_probability(self, audio: npt.ArrayLike, *, crowded: bool = False) -> float:
        with self._lock:
            self.running += 1
            self.calls += 1
            self.most = max(self.most, self.running)
            self.crowded.append(crowded)
        time.sleep(self.cost_s)
        with self._lock:
            self.running -= 1
        return self.probability


async def test_every_calls_decisions_run_one_at_a_time() -> None:
    model = SlowModel(0.02)
    judges = [SemanticJudge(model, 0.5) for _ in range(4)]  # four calls, one shared model
    verdicts = await asyncio.gather(*(judge.finished(AUDIO) for judge in judges for _ in range(2)))
    assert verdicts == [True] * 8 and model.calls == 8 and model.most == 1


async def test_a_decision_too_late_to_matter_is_skipped() -> None:
    """Asked together, the second waits for the first (0.3 s) past its useful 0.1 s: skipped, not run."""
    model = SlowModel(0.3)
    first, second = SemanticJudge(model, 0.5, useful_s=0.1), SemanticJudge(model, 0.5, useful_s=0.1)
    verdicts = await asyncio.gather(first.finished(AUDIO), second.finished(AUDIO))
    assert verdicts == [True, False]
    assert model.calls == 1 and (first.skipped, second.skipped) == (0, 1)


async def test_decisions_back_to_back_run_on_one_core() -> None:
    """A lone decision may use every core; the ones that follow another at once (calls pausing together)
    are asked to leave the other cores to the event loop, until the judges have been idle again."""
    model = SlowModel(0.02)
    judge = SemanticJudge(model, 0.5)
    await asyncio.sleep(0.2)  # the judges idle (other tests' decisions are over)
    await asyncio.gather(*(judge.finished(AUDIO) for _ in range(3)))
    await asyncio.sleep(0.2)
    await judge.finished(AUDIO)
    assert model.crowded == [False, True, True, False]
