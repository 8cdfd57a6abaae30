"""Capacity benchmark: how many simultaneous calls one model serves without anyone hearing a gap.

`python -m bench.capacity` runs, for each N in `--calls`, N calls on one tiny engine that emulates the
real model's cost (`--engine-cost minicpmo-2.6`: ~1 s of engine time to the first audio, speech made at
0.6 of real time, tens of ms per prefilled second). Each caller behaves like a person on a phone: its
microphone streams 20 ms pieces on an absolute real-time clock; it speaks an espeak-ng utterance of
~5 s, stays silent while the ~8 s reply plays (a reply of `--reply-tokens` tokens; the tiny engine makes
64 ms of speech per token), waits `--pause-s`, and speaks again. Callers start staggered over one turn.

Per turn it measures, at the caller:
- *first audio*: from pushing the piece that holds the last speech sample to receiving the first audio
  chunk (includes the 500 ms VAD silence window, as a user hears it);
- *underruns*: chunks that arrived after the caller's playback (real time from the first chunk) had run
  dry, and the silence heard (`omni_server.session.playback.Playback` on arrival times).
A level passes when no turn's listener heard 20 ms or more of silence inside a reply, and p95 first
audio ≤ `--ratio-limit` × the 1-call p95.

Calls run in this process through `CallSession` (VAD, units, worker, scheduler: all of the server but
the WebSocket), not over loopback: the question is what the one model thread can schedule, and on a
small shared CPU a WebSocket load generator's JSON/base64 work would blur exactly that. The wire's own
cost is what `bench/realtime.py` measures. The tiny model's own compute (~2-5 % of real time here) adds
to the emulated cost, so the figures are slightly pessimistic.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.realtime import INPUT_RATE_HZ, PIECE_S, PIECE_SAMPLES, Samples, espeak, machine_lines, pct
from omni_server.engine.cost import EngineCost
from omni_server.engine.tiny import build_tiny_engine
from omni_server.engine.worker import EngineWorker
from omni_server.media.vad import SileroVadModel
from omni_server.protocol import OutputAudioDelta, ResponseDone, Send, ServerEvent
from omni_server.session.call_config import CallConfig
from omni_server.session.lead_in import LeadIn
from omni_server.session.playback import Playback
from omni_server.session.session import CallSession
from omni_server.session.vad_feed import VadFeed

UTTERANCE = "Could you tell me a short story about a small robot who learns to paint the sea at night?"
LEAD_SILENCE_S = 0.4  # before each utterance, so the VAD sees a clean onset
TURN_TIMEOUT_S = 20.0  # no reply this long after speech ended: the turn failed
# A turn underran if its listener heard this much silence inside the reply: below a 20 ms audio frame a
# gap is scheduling jitter of this shared CPU (sub-millisecond ones appear even with one call), not a stall.
AUDIBLE_GAP_S = 0.02


@dataclass
class Turn:
    end_sent_at: float  # when the piece holding the last speech sample was pushed
    first_audio_at: float | None = None
    done_at: float | None = None
    playback: Playback = field(default_factory=Playback)
    audio_s: float = 0.0


class Caller:
    """One simulated person: a real-time microphone and a player, through one `CallSession`."""

    def __init__(
        self, session_factory: Callable[[str, Send], CallSession], call_id: str, utterance: Samples, pause_s: float
    ) -> None:
        self.call_id = call_id
        self.session: CallSession = session_factory(call_id, self.send)
        self.turns: list[Turn] = []
        self.failed = 0
        self._utterance = np.concatenate([np.zeros(int(LEAD_SILENCE_S * INPUT_RATE_HZ), np.float32), utterance])
        self._end_piece = (len(self._utterance) - 1) // PIECE_SAMPLES
        self._pause_s = pause_s

    async def send(self, event: ServerEvent) -> None:
        turn = self.turns[-1] if self.turns else None
        if turn is None:
            return
        now = time.monotonic()
        if isinstance(event, OutputAudioDelta):
            duration = len(event.audio) / event.sample_rate
            if turn.first_audio_at is None:
                turn.first_audio_at = now
            turn.playback.on_audio(now, duration)
            turn.audio_s += duration
        elif isinstance(event, ResponseDone):
            turn.done_at = now

    async def run(self, start_at: float, stop_at: float) -> None:
        await self.session.start()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.session.run(), name=f"{self.call_id}-session")
            await self._microphone(start_at, stop_at)
            self.session.close("bench done")

    async def _microphone(self, start_at: float, stop_at: float) -> None:
        """Push a piece every 20 ms on an absolute schedule: the utterance when it is our turn, else silence."""
        silence = np.zeros(PIECE_SAMPLES, np.float32)
        pieces = np.concatenate([self._utterance, np.zeros(-len(self._utterance) % PIECE_SAMPLES, np.float32)])
        pieces = pieces.reshape(-1, PIECE_SAMPLES)
        next_t, speaking = start_at, None
        while True:
            now = time.monotonic()
            if next_t > now:
                await asyncio.sleep(next_t - now)
            if speaking is None:
                listened = self._listened(now)
                if listened is not None:
                    if now >= stop_at:
                        return
                    if now >= max(start_at, listened + self._pause_s):
                        speaking = 0
            if speaking is None:
                self.session.push_audio(silence)
            else:
                self.session.push_audio(pieces[speaking])
                if speaking == self._end_piece:
                    self.turns.append(Turn(end_sent_at=time.monotonic()))
                speaking = speaking + 1 if speaking + 1 < len(pieces) else None
            next_t += PIECE_S

    def _listened(self, now: float) -> float | None:
        """When the last reply finished playing (or the turn gave up), or None while it still plays."""
        if not self.turns:
            return -float("inf")
        turn = self.turns[-1]
        if turn.done_at is None:
            if now - turn.end_sent_at > TURN_TIMEOUT_S:
                self.failed += 1
                turn.done_at = now
                return now
            return None
        end = turn.playback.end_at if turn.playback.end_at is not None else turn.done_at
        return end if now >= end else None


@dataclass
class Level:
    calls: int
    turns: list[Turn]
    failed: int
    wall_s: float
    busy_s: float
    late_units: int

    def first_audio_ms(self) -> np.ndarray:
        return np.array([(t.first_audio_at - t.end_sent_at) * 1000 for t in self.turns if t.first_audio_at])

    @property
    def underruns(self) -> int:
        return sum(t.playback.underruns for t in self.turns)

    @property
    def turns_underran(self) -> int:
        return sum(1 for t in self.turns if t.playback.underrun_s >= AUDIBLE_GAP_S)

    @property
    def underrun_s(self) -> float:
        return sum(t.playback.underrun_s for t in self.turns)


async def run_level(n: int, args: argparse.Namespace, utterance: Samples, vad: VadFeed) -> Level:
    cost = EngineCost.parse(args.engine_cost)
    worker = EngineWorker(build_tiny_engine(seed=args.seed, cost=cost))
    try:
        await worker.warm_up()
        config = CallConfig(max_new_tokens=args.reply_tokens, min_new_tokens=3, max_call_s=3600.0)
        lead_in = LeadIn()  # as the server's SessionManager: one start-up hold learned over the engine's calls

        def session(call_id: str, send: Send) -> CallSession:
            return CallSession(call_id, worker, config, send, vad, lead_in=lead_in)

        callers = [Caller(session, f"cap{n}-{i}", utterance, args.pause_s) for i in range(n)]
        cycle_s = len(utterance) / INPUT_RATE_HZ + 1.5 + args.reply_tokens * 0.064 + args.pause_s
        began, busy_before = time.monotonic(), worker.busy_s
        stop_at = began + args.duration_s
        async with asyncio.TaskGroup() as tg:
            for i, caller in enumerate(callers):
                tg.create_task(caller.run(began + i * cycle_s / n, stop_at), name=caller.call_id)
        wall_s = time.monotonic() - began
        turns = [t for c in callers for t in c.turns if t.done_at is not None]
        return Level(
            calls=n,
            turns=turns,
            failed=sum(c.failed for c in callers),
            wall_s=wall_s,
            busy_s=worker.busy_s - busy_before,
            late_units=sum(c.session.late_units for c in callers),
        )
    finally:
        worker.close()


def table(levels: list[Level], ratio_limit: float) -> tuple[list[str], int]:
    base = pct(levels[0].first_audio_ms(), 95) if levels and levels[0].calls == 1 else float("nan")
    lines = [
        "| calls | turns | failed | first audio p50 / p95 ms | p95 / 1-call p95 | underruns | "
        "turns with ≥ 20 ms silence | silence heard s | late units | engine busy | real-time? |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    best = 0
    for lv in levels:
        fa = lv.first_audio_ms()
        p50, p95 = pct(fa, 50), pct(fa, 95)
        ratio = p95 / base
        ok = lv.failed == 0 and lv.turns_underran == 0 and ratio <= ratio_limit and len(lv.turns) > 0
        if ok and lv.calls == best + 1:
            best = lv.calls
        lines.append(
            f"| {lv.calls} | {len(lv.turns)} | {lv.failed} | {p50:.0f} / {p95:.0f} | {ratio:.2f} | "
            f"{lv.underruns} | {lv.turns_underran} | {lv.underrun_s:.2f} | {lv.late_units} | "
            f"{lv.busy_s / lv.wall_s:.0%} | {'yes' if ok else 'no'} |"
        )
    return lines, best


async def bench(args: argparse.Namespace) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="omni-capacity-") as tmp:
        utterance = espeak(Path(tmp), args.utterance)
    vad = VadFeed(SileroVadModel())
    levels = []
    try:
        for n in [int(x) for x in args.calls.split(",")]:
            levels.append(await run_level(n, args, utterance, vad))
            print(f"{n} calls: {len(levels[-1].turns)} turns", file=sys.stderr, flush=True)
    finally:
        vad.close()
    rows, best = table(levels, args.ratio_limit)
    reply_s = args.reply_tokens * 0.064
    return [
        f"Engine cost `{args.engine_cost}`; utterance {len(utterance) / INPUT_RATE_HZ:.2f} s of espeak-ng speech, "
        f"replies ~{reply_s:.1f} s ({args.reply_tokens} tokens), {args.pause_s} s pause after each reply; "
        f"~{args.duration_s:.0f} s of calls per level, starts staggered over one turn; VAD silence 500 ms.",
        "",
        *rows,
        "",
        f"Largest N with no turn hearing ≥ 20 ms of silence and p95 first audio ≤ {args.ratio_limit}× the "
        f"1-call p95: **{best}**.",
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.capacity", description=__doc__.splitlines()[0])
    p.add_argument("--calls", default="1,2,3,4,5,6", help="Numbers of simultaneous calls, comma-separated, from 1.")
    p.add_argument("--duration-s", type=float, default=40.0, help="How long callers keep starting turns, per level.")
    p.add_argument("--engine-cost", default="minicpmo-2.6", help="Tiny engine cost preset or overrides (cost.py).")
    p.add_argument("--reply-tokens", type=int, default=125, help="Reply length in tokens (64 ms of speech each).")
    p.add_argument("--pause-s", type=float, default=0.5, help="The caller's pause after a reply before speaking.")
    p.add_argument("--utterance", default=UTTERANCE, help="What each caller says (espeak-ng, en-us, 150 wpm).")
    p.add_argument("--ratio-limit", type=float, default=1.5, help="Pass if p95 first audio ≤ this × the 1-call p95.")
    p.add_argument("--seed", type=int, default=0, help="Tiny engine seed.")
    p.add_argument("--quick", action="store_true", help="Smoke run: 1-4 calls, 20 s each (about 2 minutes).")
    args = p.parse_args(argv)
    if args.quick:
        args.calls, args.duration_s = "1,2,3,4", 20.0
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    started = datetime.datetime.now(datetime.UTC)
    lines = asyncio.run(bench(args))
    header = [f"# omni_server capacity bench, {started:%Y-%m-%d %H:%M} UTC", "", *machine_lines(), ""]
    sys.stdout.write("\n".join([*header, *lines]) + "\n")


if __name__ == "__main__":
    main()
