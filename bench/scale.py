"""Scale benchmark: how many real-time calls the gateway (transport + session + VAD) carries, per media path.

`python -m bench.scale` (`make bench BENCH=scale`) starts the server as a separate process with the null
engine (the model contract with no model: engine/null.py) and no engine cost, so the model is free and
what limits is the gateway (`--engine tiny`: the tiny model's compute, one engine thread, limits first at
~25 calls on 2 cores). For each path:

- WebSocket, `json`: the SDK dialect, 20 ms of base64 float32 in an `input.append` per piece;
- WebSocket, `binary`: our binary audio messages (docs/protocol.md), the same pieces as raw float32;
- WebRTC: aiortc calls, Opus on RTP tracks, events on a data channel (`--webrtc-levels`);

it runs one call for `--turns` turns (the baseline), then each level of `--levels` calls at once for
`--duration-s`. Callers speak the espeak-ng fixture in real time, hear the reply out, pause and speak
again (`bench.realtime`); they run in load generator processes (`bench.loadgen`) that report their
own lag and CPU. A level is real time (issue 13) when no turn failed, no reply stalled, p95 first
audio ≤ `--ratio-limit` × the path's 1-call p95 and the server's input lag p95 ≤ 100 ms.

The server's CPU over each level is read from /proc, split into its event loop thread and every other
thread (engine, VAD batcher, ...), per session-second of talking: far less sensitive to a busy
machine than latencies are, so the bench also projects capacity from it: the event loop is one
thread, so it saturates at 1000 / (loop ms per session-s) calls; the process at 1000 × cores /
(all ms per session-s), less what the load generator takes on the same machine.

Must not import anything from `omni_server` (the server is a black box behind its wire protocol).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.loadgen import run_phase
from bench.realtime import (
    PhaseResult,
    concurrency_table,
    cpu_per_session_ms,
    machine_lines,
    make_fixture,
    pct,
    real_time,
    server_process,
)

PATHS = ("json", "binary", "webrtc")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.scale", description=__doc__.splitlines()[0])
    p.add_argument("--levels", default="10,25,50,75", help="Calls at once over the WebSocket paths, comma-separated.")
    p.add_argument("--frames", default="json,binary", help="WebSocket paths to run: json, binary ('' skips).")
    p.add_argument("--webrtc-levels", default="1,4,8", help="Calls at once over WebRTC ('' skips).")
    p.add_argument("--duration-s", type=float, default=30.0, help="Talking time per level.")
    p.add_argument("--turns", type=int, default=6, help="Turns of each path's one-call baseline.")
    p.add_argument("--ratio-limit", type=float, default=1.5, help="Real time if p95 first audio ≤ this × baseline.")
    p.add_argument("--vad-silence-ms", type=int, default=500, help="Passed to the server.")
    p.add_argument("--event-loop", default="auto", help="Passed to the server: auto, asyncio or uvloop.")
    p.add_argument("--engine", default="null", choices=("null", "tiny"), help="The server's engine (no engine cost).")
    p.add_argument("--server-args", default="", help='More server flags, e.g. "--no-turn-model --no-speculate".')
    p.add_argument("--processes", type=int, default=None, help="Load generator processes (default: one per 25).")
    p.add_argument("--seed", type=int, default=0, help="Seeds the callers' start offsets.")
    return p.parse_args(argv)


def _levels(text: str) -> list[int]:
    return [int(n) for n in text.split(",") if n.strip()]


def projection(phases: Sequence[PhaseResult], baseline_p95_ms: float, ratio_limit: float) -> list[str]:
    """The largest real-time level, and the capacity the CPU per session-second projects."""
    passing = [p.sessions for p in phases if real_time(p, baseline_p95_ms, ratio_limit)]
    lines = [f"Largest real-time level: **{max(passing) if passing else 'none'}** of {[p.sessions for p in phases]}."]
    measured = [p for p in phases if p.server_cpu is not None]
    if not measured:
        return lines
    ref = max(measured, key=lambda p: p.sessions)
    loop_ms, other_ms = cpu_per_session_ms(ref)
    cores = os.cpu_count() or 1
    gen_cores = ref.loadgen.cpu_s / ref.loadgen.talk_s if ref.loadgen else 0.0
    lines.append(
        f"CPU per session-second at {ref.sessions} calls: event loop {loop_ms:.1f} ms, other threads {other_ms:.1f} ms "
        f"(load avg {ref.load_1min:.1f}). Projected: the loop saturates at ~{1000 / loop_ms:.0f} calls; the "
        f"process at ~{1000 * cores / (loop_ms + other_ms):.0f} calls on {cores} cores, "
        f"~{1000 * max(cores - gen_cores, 0.0) / (loop_ms + other_ms):.0f} beside this load generator "
        f"({gen_cores:.2f} cores for {ref.sessions} callers)."
    )
    return lines


async def run_path(args: argparse.Namespace, workdir: Path, path: str) -> list[str]:
    transport = "webrtc" if path == "webrtc" else "websocket"
    levels = _levels(args.webrtc_levels if path == "webrtc" else args.levels)
    fixture = make_fixture(workdir, binary=path == "binary")
    most = str(max([1, *levels]))
    flags = ["--engine", args.engine, "--engine-cost", "none"]
    flags += ["--vad-silence-ms", str(args.vad_silence_ms), "--max-queue", "16"]
    flags += ["--max-sessions", most, "--max-connections-per-ip", most, "--event-loop", args.event_loop]
    flags += args.server_args.split()
    common = {"silence_ms": args.vad_silence_ms, "processes": args.processes, "transport": transport}
    async with server_process(workdir, flags) as server:
        # WebRTC callers talk until the deadline whatever max_turns says: ~6 s a turn (3.4 s speech, reply, pause).
        base_s = 3600.0 if transport == "websocket" else args.turns * 6.0
        base = await run_phase(
            server, fixture, label="1 call", sessions=1, duration_s=base_s, max_turns=args.turns, seed=args.seed,
            **common,
        )  # fmt: skip
        phases = []
        for n in levels:
            phases.append(
                await run_phase(
                    server,
                    fixture,
                    label=f"{n} calls",
                    sessions=n,
                    duration_s=args.duration_s,
                    max_turns=10**6,
                    seed=args.seed + n,
                    **common,
                )  # fmt: skip
            )
            print(f"{path}: {n} calls done", file=sys.stderr, flush=True)
    fa = base.first_audio_ms()
    baseline = pct(fa, 95)
    title = {"json": "WebSocket, SDK dialect (base64 in JSON)", "binary": "WebSocket, binary audio messages"}
    return [
        f"### {title.get(path, 'WebRTC (aiortc callers)')}",
        "",
        f"1 call: {len(base.turns)} turns, first audio p50 / p95 {pct(fa, 50):.0f} / {baseline:.0f} ms "
        f"(load avg {base.load_1min:.1f}).",
        "",
        *concurrency_table(baseline, phases, args.ratio_limit),
        "",
        *projection(phases, baseline, args.ratio_limit),
        "",
    ]


async def bench(args: argparse.Namespace) -> list[str]:
    paths = [f for f in args.frames.split(",") if f.strip()]
    if _levels(args.webrtc_levels):
        paths.append("webrtc")
    unknown = set(paths) - set(PATHS)
    if unknown:
        raise SystemExit(f"unknown --frames: {', '.join(sorted(unknown))}")
    lines = [
        f"{args.engine.capitalize()} engine, no engine cost; {args.duration_s:.0f} s per level; real time = no failed turn, no stall, "
        f"p95 first audio ≤ {args.ratio_limit}× the path's 1-call p95, input lag p95 ≤ 100 ms; server "
        f"event loop `{args.event_loop}`; other server flags: `{args.server_args or 'none'}`.",
        "",
    ]
    with tempfile.TemporaryDirectory(prefix="omni-scale-") as tmp:
        for path in paths:
            lines += await run_path(args, Path(tmp), path)
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    started = datetime.datetime.now(datetime.UTC)
    lines = asyncio.run(bench(args))
    header = [f"# omni_server scale bench, {started:%Y-%m-%d %H:%M} UTC", "", *machine_lines(), ""]
    sys.stdout.write("\n".join([*header, *lines]) + "\n")


if __name__ == "__main__":
    main()
