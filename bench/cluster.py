"""Cluster benchmark: what the gateway -> Ray Serve replica hop costs, per unit and per turn.

`python -m bench.cluster` measures, on a private local Ray (loopback) with tiny-engine replicas:

1. *The hop per engine call*, in this process: the same tiny engine is driven through a local
   `EngineWorker` and through the cluster client (`ClusterClient` -> Serve -> replica), alternating
   call by call, for `--units` one-second audio units (`prefill`), no-op calls (`run`, the bare round
   trip) and reply chunks (`next`). *Added* = remote − local at the same percentile.
2. *End of speech -> first audio*, through the whole server: `bench.realtime`'s real-time callers
   against the single-process server and against the cluster gateway with one replica.
3. *Calls sustained per replica*: the same callers at each `--sessions` level, against both; a level is
   real-time when no turn fails or stalls and p95 first audio stays within `--ratio-limit`× the
   one-call p95 of the same server (bench.realtime's criterion).

The load generator, the gateway and the replicas share this machine's cores; with other work running
the absolute numbers are pessimistic. The single-process and cluster runs alternate per phase.

Must not import: omni_server.transport (the server is measured through its wire protocol).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.loadgen import run_phase
from bench.realtime import (
    PhaseResult,
    concurrency_table,
    latency_table,
    machine_lines,
    make_fixture,
    pct,
    server_process,
)
from omni_server.cluster.launch import cluster_engines
from omni_server.config import Settings
from omni_server.engine.base import OmniModel
from omni_server.engine.tiny import build_tiny_engine
from omni_server.engine.worker import EngineWorker

UNIT_SAMPLES = 16_000
ROLL_EVERY = 20  # units per conversation before a fresh one, to stay far from the context limit


def _noop(model: OmniModel) -> None:
    return None


async def _timed(call: Callable[[], Awaitable[Any]]) -> float:
    """Milliseconds `call()` takes (awaited at once, so the loop variables it reads are current)."""
    start = time.perf_counter()
    await call()
    return (time.perf_counter() - start) * 1000


async def hop_overhead(units: int, seed: int) -> dict[str, dict[str, list[float]]]:
    """Per-call times (ms) for local and remote: prefill of a unit, a no-op round trip, reply chunks."""
    settings = Settings(engine="tiny", cluster="local", replicas=1, replica_cpus=2.0, max_new_tokens=48)
    local = EngineWorker(build_tiny_engine(seed=0))
    keys = ("prefill", "noop", "first", "chunk")
    times: dict[str, dict[str, list[float]]] = {k: {"local": [], "remote": []} for k in keys}
    rng = np.random.default_rng(seed)
    try:
        await local.warm_up()
        async with cluster_engines(settings) as engines:
            remote = engines.client(engines.pool.live()[0].id)
            workers: dict[str, Any] = {"local": local, "remote": remote}
            convs: dict[str, Any] = {}
            for i in range(units):
                if i % ROLL_EVERY == 0:
                    for name, worker in workers.items():
                        if name in convs:
                            await _reply_chunks(worker, convs[name], times["first"][name], times["chunk"][name])
                            await worker.release(convs[name])
                        convs[name] = worker.open(f"bench-{name}-{i}")
                        prompt = await worker.run(convs[name], lambda m: m.get_sys_prompt(mode="omni", language="en"))
                        await worker.prefill(convs[name], [prompt])
                unit = (rng.standard_normal(UNIT_SAMPLES) * 0.05).astype(np.float32)
                order = ["local", "remote"] if i % 2 == 0 else ["remote", "local"]
                for name in order:
                    worker, conv = workers[name], convs[name]
                    msgs = [{"role": "user", "content": [unit]}]
                    times["prefill"][name].append(await _timed(lambda: worker.prefill(conv, msgs)))  # noqa: B023
                    times["noop"][name].append(await _timed(lambda: worker.run(conv, _noop)))  # noqa: B023
            for name, worker in workers.items():
                await _reply_chunks(worker, convs[name], times["first"][name], times["chunk"][name])
                await worker.release(convs[name])
    finally:
        local.close()
    return times


async def _reply_chunks(worker: Any, conv: Any, first: list[float], rest: list[float]) -> None:
    """Times from asking for a reply to its first chunk, and of each later `next()`."""
    start = time.perf_counter()
    stream = await worker.reply(conv, max_new_tokens=48)
    out = first
    while await stream.next() is not None:
        out.append((time.perf_counter() - start) * 1000)
        out, start = rest, time.perf_counter()
    await stream.close()


def hop_table(times: dict[str, dict[str, list[float]]]) -> list[str]:
    rows = [
        "| engine call | n | local p50 / p95 ms | via replica p50 / p95 ms | added p50 / p95 ms |",
        "|---|---|---|---|---|",
    ]
    labels = {
        "prefill": "prefill of a 1-s unit",
        "noop": "no-op call (bare round trip)",
        "first": "reply start -> first chunk",
        "chunk": "each later reply chunk",
    }
    for key, label in labels.items():
        lo, re = np.array(times[key]["local"]), np.array(times[key]["remote"])
        rows.append(
            f"| {label} | {len(re)} | {pct(lo, 50):.2f} / {pct(lo, 95):.2f} | {pct(re, 50):.2f} / {pct(re, 95):.2f} "
            f"| {pct(re, 50) - pct(lo, 50):.2f} / {pct(re, 95) - pct(lo, 95):.2f} |"
        )
    return rows


async def end_to_end(args: argparse.Namespace) -> list[str]:
    """bench.realtime's callers against one process and against the gateway with one replica."""
    levels = [int(n) for n in args.sessions.split(",") if n.strip()]
    most = str(max([1, *levels]))
    common = ["--vad-silence-ms", str(args.vad_silence_ms), "--max-queue", "16", "--max-sessions", most]
    setups = {
        "single process": common,
        "gateway + 1 replica": [*common, "--cluster", "local", "--replicas", "1", "--replica-cpus", "2"],
    }
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="omni-bench-cluster-") as tmp:
        workdir = Path(tmp)
        fixture = make_fixture(workdir)
        results: dict[str, list[PhaseResult]] = {}
        for name, extra in setups.items():
            async with server_process(workdir, extra, start_timeout_s=180.0) as server:
                phases = [
                    await run_phase(
                        server,
                        fixture,
                        label=f"{name}, 1 call",
                        sessions=1,
                        duration_s=3600.0,
                        max_turns=args.turns,
                        silence_ms=args.vad_silence_ms,
                        seed=args.seed,
                    )
                ]
                for n in levels:
                    phases.append(
                        await run_phase(
                            server,
                            fixture,
                            label=f"{name}, {n} calls",
                            sessions=n,
                            duration_s=args.duration_s,
                            max_turns=10**6,
                            silence_ms=args.vad_silence_ms,
                            seed=args.seed + n,
                        )
                    )
            results[name] = phases
    base = {k: v[0].first_audio_ms() for k, v in results.items()}
    a, b = base["single process"], base["gateway + 1 replica"]
    lines += [
        "End of speech → first audio, one call (`bench.realtime` columns):",
        "",
        *latency_table([v[0] for v in results.values()], args.vad_silence_ms),
        "",
        f"Added by the hop: p50 {pct(b, 50) - pct(a, 50):+.0f} ms, p95 {pct(b, 95) - pct(a, 95):+.0f} ms.",
    ]
    for name, phases in results.items():
        if len(phases) > 1:
            baseline = pct(phases[0].first_audio_ms(), 95)
            lines += [
                "",
                f"{name}: calls at once (~{args.duration_s:.0f} s of talking each; real-time = no failed turn, "
                f"no stall, p95 ≤ {args.ratio_limit}× this server's 1-call p95 of {baseline:.0f} ms):",
                "",
                *concurrency_table(baseline, phases[1:], args.ratio_limit),
            ]
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.cluster", description=__doc__.splitlines()[0])
    p.add_argument("--units", type=int, default=60, help="One-second units for the per-call hop measurement.")
    p.add_argument("--turns", type=int, default=6, help="Turns of the one-call end-to-end runs.")
    p.add_argument("--sessions", default="4,8", help="Concurrent calls per level, comma-separated ('' skips).")
    p.add_argument("--duration-s", type=float, default=20.0, help="Talking time per concurrency level.")
    p.add_argument("--ratio-limit", type=float, default=1.5, help="Real-time if p95 first audio ≤ this × 1-call p95.")
    p.add_argument("--vad-silence-ms", type=int, default=500, help="Passed to the servers.")
    p.add_argument("--seed", type=int, default=0, help="Seeds the audio units and callers' offsets.")
    p.add_argument("--skip-end-to-end", action="store_true", help="Only the per-call hop measurement.")
    return p.parse_args(argv)


async def bench(args: argparse.Namespace) -> list[str]:
    times = await hop_overhead(args.units, args.seed)
    lines = [
        "Per engine call, same tiny engine, local `EngineWorker` vs gateway client -> Serve -> replica "
        f"(alternating; load avg {os.getloadavg()[0]:.1f}):",
        "",
        *hop_table(times),
    ]
    if not args.skip_end_to_end:
        lines += ["", *await end_to_end(args)]
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    started = datetime.datetime.now(datetime.UTC)
    lines = asyncio.run(bench(args))
    header = [f"# omni_server cluster bench, {started:%Y-%m-%d %H:%M} UTC", "", *machine_lines(), ""]
    sys.stdout.write("\n".join([*header, *lines]) + "\n")


if __name__ == "__main__":
    main()
