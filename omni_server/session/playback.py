"""The listener's playback buffer as the server sees it: how far a reply's audio is ahead of playback.

A client plays reply audio as it arrives, at real time, from the moment the first chunk lands. From
the server's side that is a clock: audio sent so far minus wall time since playback began is what the
listener still has buffered ("ahead of playback"). A chunk sent after that buffer ran dry is an
underrun: the listener heard a gap, and playback resumes with the late chunk, so the clock restarts
from there. Network delay is not seen here, so these figures are an upper bound on what the client has.

The scheduler uses `end_at` to order reply chunks (a call about to run dry goes first), events carry
`ahead_s` to clients, and metrics read it through `CallSession.ahead_of_playback_s`.

Sans-I/O: every method takes the time; no clock reads, no asyncio. Must not import: anything else of
omni_server, websockets, aiortc, torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Playback:
    """One reply's playback timeline at the listener, fed with each audio chunk's send time and length."""

    end_at: float | None = None  # when the audio sent so far runs out at the listener; None before audio
    underruns: int = 0  # chunks that arrived after the listener's buffer had run dry
    underrun_s: float = 0.0  # total silence the listener heard inside the reply
    min_ahead_s: float | None = None  # the least buffered audio seen when a later chunk arrived

    def on_audio(self, now: float, duration_s: float) -> None:
        """A chunk of `duration_s` seconds of speech is sent at `now`."""
        if self.end_at is None:
            self.end_at = now
        elif now > self.end_at:
            self.underruns += 1
            self.underrun_s += now - self.end_at
            self.min_ahead_s = 0.0
            self.end_at = now  # playback resumes with this chunk
        else:
            ahead = self.end_at - now
            self.min_ahead_s = ahead if self.min_ahead_s is None else min(self.min_ahead_s, ahead)
        self.end_at += duration_s

    def ahead_s(self, now: float) -> float:
        """Seconds of audio the listener still has buffered at `now` (0 before the first chunk)."""
        return 0.0 if self.end_at is None else max(0.0, self.end_at - now)
