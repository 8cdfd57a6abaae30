"""How far a call's input may run ahead of real time: a token bucket counted in media seconds.

A live microphone sends one second of audio per second. A client may send faster for a moment (a
network stall catching up, a file's first seconds), but a call that keeps sending faster than real
time takes model time and event-loop time from every other call: it would prefill units nobody is
speaking, at the expense of their replies. So each input message is charged its duration against a
bucket that holds at most `burst_s` seconds and refills at one second per second; a message it
cannot cover is refused whole (the transport answers `rate_limited`) and costs nothing. Every
message is charged at least `min_charge_s`, so a flood of tiny ones is bounded too (50 a second by
default: a 20 ms WebRTC frame each).

Sans-I/O: no awaits, no sockets; the clock is injected. Must not import: websockets, aiortc, torch.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["RealTimeBudget"]

MIN_CHARGE_S = 0.02
_EPSILON_S = 1e-6


class RealTimeBudget:
    """Input seconds a call may still send ahead of real time; `take` charges one message."""

    def __init__(
        self, burst_s: float, *, min_charge_s: float = MIN_CHARGE_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if burst_s <= 0 or min_charge_s < 0:
            raise ValueError(f"burst_s must be > 0 and min_charge_s >= 0, got {burst_s} and {min_charge_s}")
        self.burst_s = burst_s
        self.min_charge_s = min_charge_s
        self._clock = clock
        self._tokens_s = burst_s  # a new call may send its first burst at once
        self._at = clock()

    @property
    def available_s(self) -> float:
        """Seconds of input that would be accepted now."""
        return min(self.burst_s, self._tokens_s + max(0.0, self._clock() - self._at))

    def take(self, duration_s: float) -> bool:
        """Charge a message of `duration_s` (at least `min_charge_s`); False, charging nothing, if over budget."""
        now = self._clock()
        self._tokens_s = min(self.burst_s, self._tokens_s + max(0.0, now - self._at))
        self._at = now
        cost = max(duration_s, self.min_charge_s)
        if cost > self._tokens_s + _EPSILON_S:  # (exact real-time pacing must not fail on rounding)
            return False
        self._tokens_s -= cost
        return True
