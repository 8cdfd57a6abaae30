"""How long a reply's first audio waits before it starts playing, so that the listener never runs dry after it.

MiniCPM-o 2.6 yields its speech one TTS step behind: 0.448 s of audio after the first step, then only the
0.085 s cross-fade after a whole second step, then 0.533 s per step. At its published pace (a step costs
0.6 × 0.533 = 0.32 s) a listener who starts on the first chunk at once has 0.533 s to play before the
third chunk, which comes 0.64 s after the first: a ~0.1 s hole, whatever the transport. Holding the
first chunk back by that deficit removes the hole and costs no more than it.

The deficit is measured, not assumed: for every reply, `observe` takes when each audio chunk became
available and how long it plays, and works out the least start-up delay that would have kept every later
chunk in time (`needed_s`). A reply that ended by itself is judged without its last two chunks: they come
out of the model's final TTS step, often a short one (the speech ended after a few codes), and the audio
held back for the cross-fade, at no cost, so they come sooner than the pace; counted, a reply whose speech
ended at its third step taught "no hold" and the next reply ran dry after its first chunk. In their place
comes one more chunk, as long after the last one kept as that one came after the chunk before it (the
step the model would have taken had the reply gone on): a reply that ended at its third step still
teaches the hole after its second chunk, and a new server's first replies need not wait, as before
anything is measured, for their second chunk (0.32 s at the real pace, where 0.17 s is enough). The next
replies hold their first chunk for the largest need among the recent replies, a quarter more and a
margin, at most `max_s`: a slower or busier engine holds what it needs. A reply whose audio was all
there before its first chunk had played never tested the pace and teaches nothing: a fast engine's (the
tiny one, a faster GPU).
Before anything is measured, the first chunk waits for the second, at most `max_s` (with a fast
engine, no time at all).

Sans-I/O: times are given, never read; no asyncio. Must not import anything else of omni_server,
websockets, aiortc, torch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

Arrival = tuple[float, float]  # (when the chunk was there to send, its duration in seconds)


def needed_s(chunks: Sequence[Arrival]) -> float:
    """The least delay of the first chunk's playback after which no later chunk arrives late.

    Playback starting `d` after the first chunk plays chunk k at `t_1 + d + (durations before k)`, so
    chunk k is in time when `d >= t_k - t_1 - (durations before k)`."""
    if not chunks:
        return 0.0
    first_at, played = chunks[0][0], 0.0
    need = 0.0
    for at, duration_s in chunks:
        need = max(need, at - first_at - played)
        played += duration_s
    return need


@dataclass
class LeadIn:
    """The start-up hold of reply audio, learned from the chunk timing of recent replies (one per engine)."""

    margin_s: float = 0.04  # on top of the measured need: scheduling jitter between replies
    max_s: float = 0.35  # never hold longer than this, whatever was measured (an overloaded engine)
    history: int = 6  # replies remembered
    _needs: deque[float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not (0 <= self.margin_s <= self.max_s) or self.history < 1:
            raise ValueError("LeadIn needs 0 <= margin_s <= max_s and history >= 1")
        self._needs = deque(maxlen=self.history)

    @property
    def needs(self) -> tuple[float, ...]:
        """The start-up needs of the replies remembered, oldest first."""
        return tuple(self._needs)

    @property
    def measured(self) -> bool:
        """True once a reply with at least two audio chunks has been observed."""
        return bool(self._needs)

    def hold_s(self) -> float:
        """How long the next reply's first chunk waits (before any measurement: `max_s`, or until the
        second chunk arrives, which the caller watches).

        The largest recent need, a quarter more and the margin: the quarter covers an engine ~13% slower
        than the slowest recent reply (the need grows 0.064 s for every 10% at the real pace). The spread
        of the needs is not added: short replies need less than long ones without the engine varying, and
        a hold of max + spread was at its 350 ms cap on the page bench."""
        if not self._needs:
            return self.max_s
        need = max(self._needs)
        if need <= 0:
            return 0.0
        return min(self.max_s, need * 1.25 + self.margin_s)

    def observe(self, chunks: Sequence[Arrival], *, ended: bool = True) -> float | None:
        """Learn from one reply's audio chunks, in order (`ended`: the model finished it, rather than being
        stopped); returns its need (None: nothing to tell, too few chunks or all of them there before the
        first had played)."""
        if ended:  # the final step's two chunks, for one more whole step: see the module docstring
            chunks = chunks[:-2]
            if len(chunks) >= 2:
                (before, _), (last, _) = chunks[-2:]
                chunks = [*chunks, (2 * last - before, 0.0)]
        if len(chunks) < 2:
            return None
        need = needed_s(chunks)
        first_at, first_s = chunks[0]
        if need <= 0 and chunks[-1][0] <= first_at + first_s:
            return None  # everything was there before the first chunk had played: the pace was never tested
        self._needs.append(need)
        return need
