"""How a call's turn ends, and the replies started before it has: the pieces `CallSession` composes.

- `SemanticJudge`: asks the end-of-turn model (Smart Turn) off the event loop whether the user has
  finished, given the turn's audio so far; a decision costs ~10-120 ms of CPU. Every call's
  decisions run one at a time on one thread: run side by side (the default executor's threads), they
  took the cores the event loop and the VAD need when many calls paused at once. A decision that has
  waited longer than its silence window has left is skipped: the window ends that turn first anyway.
  A lone decision runs on every core the model may use (it is on its turn's critical path); one that
  follows another at once (many calls pausing) runs on one, leaving the others to the event loop.
- `Hold`: a reply started speculatively holds its output until the turn is confirmed (`release`), or
  is dropped; it also remembers how much of the reply was ready at the decision.
- `TurnEnd`: which rule ended a turn and how long after the end of speech, for `response.done`.

A dropped speculation, or a reply the user talks into at once (their turn was not over), is rolled
back exactly (engine/rollback.py): the model's state, the usage counters, and the turn's audio, which
rejoins the unit cutter as if the turn had never been cut.

Must not import: websockets, aiortc, torch, the engine's models.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from omni_server.media.smart_turn import SmartTurnModel

__all__ = ["Hold", "Kept", "RecentAudio", "SemanticJudge", "TurnEnd"]

Samples = npt.NDArray[np.float32]


@dataclass(frozen=True)
class TurnEnd:
    """What ended a turn: `rule` is "semantic", "silence" or "commit"; `after_speech_ms` is the audio
    time from the end of speech to the decision (0 for a commit)."""

    rule: str
    after_speech_ms: float


class SemanticJudge:
    """Smart Turn over a call's turn audio, on the judges' one thread so the event loop never waits on it.

    `useful_s`: how long after it is asked a decision can still end the turn before the silence window
    does; one that has not started by then is skipped (counted in `skipped`)."""

    def __init__(self, model: SmartTurnModel, threshold: float, useful_s: float = math.inf) -> None:
        self.model = model
        self.threshold = threshold
        self.useful_s = useful_s
        self.skipped = 0

    async def finished(self, audio: Samples) -> bool:
        """True when the model is at least `threshold` sure the speaker has finished (False when skipped)."""
        asked, judges = time.monotonic(), _judges()

        def decide() -> float | None:  # on the judges' thread
            start = time.monotonic()
            if start - asked > self.useful_s:
                return None
            try:
                return self.model.complete_probability(audio, crowded=start - judges.last_end < _BACK_TO_BACK_S)
            finally:
                judges.last_end = time.monotonic()

        probability = await asyncio.get_running_loop().run_in_executor(judges.thread, decide)
        if probability is None:
            self.skipped += 1
            return False
        return probability >= self.threshold


_BACK_TO_BACK_S = 0.1  # a decision starting this soon after the last one ended: the judges are busy


@dataclass
class _Judges:
    """The one thread every call's decisions run on; `last_end` is read and written on it only."""

    thread: concurrent.futures.ThreadPoolExecutor
    last_end: float = -math.inf


@functools.cache
def _judges() -> _Judges:
    return _Judges(concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="smart-turn"))


class RecentAudio:
    """The last `max_samples` of a stream, in the pieces they came in; `last(n)` reads without emptying."""

    def __init__(self, max_samples: int) -> None:
        self.max_samples = max_samples
        self._pieces: deque[Samples] = deque()
        self._size = 0

    def push(self, samples: Samples) -> None:
        self._pieces.append(samples)
        self._size += len(samples)
        while self._size - len(self._pieces[0]) >= self.max_samples:
            self._size -= len(self._pieces.popleft())

    def last(self, n: int) -> Samples:
        """The newest `min(n, max_samples)` samples, oldest first."""
        n = max(0, min(n, self.max_samples, self._size))
        joined = np.concatenate(list(self._pieces)) if self._pieces else np.zeros(0, np.float32)
        return joined[len(joined) - n :]


@dataclass
class Kept:
    """Audio kept after a turn's partial unit was cut, to rejoin the turn if it goes on (bounded)."""

    max_samples: int
    pieces: list[Samples] = field(default_factory=list)
    samples: int = 0

    def add(self, piece: Samples) -> bool:
        """Keep `piece`; False once more than `max_samples` would be kept (then keep nothing more)."""
        self.pieces.append(piece)
        self.samples += len(piece)
        return self.samples <= self.max_samples


@dataclass
class Hold:
    """A speculative reply's output gate: closed until the turn is confirmed."""

    response_id: str
    released: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: bool = False  # the user went on before the reply had even started
    on_release: Callable[[float], None] | None = None  # the reply's `confirm(deadline)`, once it exists
    started_at: float = 0.0  # when the speculation was asked for
    released_at: float | None = None  # when the turn was confirmed
    chunks_at_release: int | None = None  # chunks already made when the turn was confirmed
    chunks: int = 0  # chunks made so far
    audio_s: float = 0.0  # their speech, in seconds
    audio_s_at_release: float | None = None

    def release(self, now: float, deadline: float) -> None:
        """The turn is confirmed: the reply's steps become ordinary work due at `deadline`."""
        self.released_at = now
        self.chunks_at_release = self.chunks
        self.audio_s_at_release = self.audio_s
        self.released.set()
        if self.on_release is not None:
            self.on_release(deadline)

    def timings(self) -> dict[str, object]:
        """`response.done` fields: how long before the decision it started, whether its first chunk was ready."""
        lead = None if self.released_at is None else self.released_at - self.started_at
        ready = self.audio_s_at_release
        return {
            "speculative": True,
            "speculation_lead_ms": None if lead is None else round(lead * 1000, 1),
            "first_chunk_ready_at_decision": bool(self.chunks_at_release),
            "audio_ready_at_decision_ms": None if ready is None else round(ready * 1000, 1),
        }
