"""Load generator: `bench.realtime`'s callers run in worker processes of their own, never in the bench's.

`run_phase` is how every bench that talks to a server over the WebSocket API runs its callers
(`bench.realtime`, `bench.cluster`, `bench.scale`).

One Python process driving dozens of TLS WebSockets (JSON, base64, a send every 20 ms per caller) falls
behind long before a server does, and then measures itself. `run_phase` splits the callers over
`processes` workers (`python -m bench.loadgen --worker`; by default one per 25 callers); each connects
its callers, says it is ready, starts talking at the common start time the bench gives it
(`time.monotonic()` is one clock for every process on the machine), and answers with its calls as
JSON. The bench reads the server's CPU time from /proc over the same span. Besides the calls, every
worker reports its own lag, so a run can show that the generator kept up:

- *send lateness*: how late each 20 ms piece went out against its absolute schedule (per caller);
- *loop lag*: how late a 10 ms timer on the worker's event loop fired (its loop's saturation);
- *CPU*: the worker's CPU seconds while its callers talked.

Protocol between the bench and a worker, one JSON object per line: bench → worker `{"config": ...}`,
worker → bench `{"ready": true}`, bench → worker `{"begin_at": t, "stop_at": t}`, worker → bench
`{"calls": [...], "load": {...}}`. A worker that fails writes its traceback to stderr and exits non-zero.

Must not import anything from `omni_server` (the server is a black box behind its wire protocol).
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.realtime import (
    PIECE_S,
    Caller,
    CallRecord,
    Fixture,
    PhaseResult,
    ServerHandle,
    fixture_from_audio,
    open_caller,
    pct,
)

LAG_TICK_S = 0.01
HANDSHAKES_AT_ONCE = 8  # per worker: TLS handshakes are the costly part of connecting
CALLERS_PER_PROCESS = 25


@dataclass(frozen=True)
class LoadStats:
    """How the load generator itself fared (all workers together)."""

    processes: int
    cpu_s: float  # the workers' CPU while their callers talked
    talk_s: float  # wall time from the common start to the last worker's end
    loop_lag_p95_ms: float
    loop_lag_max_ms: float


@dataclass
class _Worker:
    proc: asyncio.subprocess.Process
    sessions: int

    async def send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(obj).encode() + b"\n")
        await self.proc.stdin.drain()

    async def receive(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await self.proc.stdout.readline()
        if not line:
            code = await self.proc.wait()
            raise RuntimeError(f"a load generator worker exited ({code}) before answering; its stderr says why")
        answer: dict[str, Any] = json.loads(line)
        return answer


def default_processes(sessions: int) -> int:
    return max(1, math.ceil(sessions / CALLERS_PER_PROCESS))


@dataclass(frozen=True)
class CpuSplit:
    """CPU seconds a process spent: its main thread (the server's event loop) and all its other threads."""

    loop_s: float
    other_s: float

    @property
    def total_s(self) -> float:
        return self.loop_s + self.other_s

    def __sub__(self, earlier: CpuSplit) -> CpuSplit:
        return CpuSplit(self.loop_s - earlier.loop_s, self.other_s - earlier.other_s)


def process_cpu(pid: int) -> CpuSplit:
    """From /proc: the process's CPU (exited threads included) and its main thread's (thread id = pid)."""
    tick = os.sysconf("SC_CLK_TCK")

    def seconds(stat_path: str) -> float:
        fields = Path(stat_path).read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / tick  # utime + stime

    total, main = seconds(f"/proc/{pid}/stat"), seconds(f"/proc/{pid}/task/{pid}/stat")
    return CpuSplit(main, total - main)


async def run_phase(
    server: ServerHandle,
    fixture: Fixture,
    *,
    label: str,
    sessions: int,
    duration_s: float,
    max_turns: int,
    silence_ms: int,
    seed: int,
    processes: int | None = None,
    transport: str = "websocket",
) -> PhaseResult:
    """Run `sessions` callers in worker processes from a common start until `duration_s` (or `max_turns`),
    and read the server's CPU over that time. `transport` "webrtc": aiortc calls (`bench.webrtc`),
    which talk until the deadline whatever `max_turns` says."""
    count = min(sessions, processes or default_processes(sessions))
    shares = [sessions // count + (i < sessions % count) for i in range(count)]
    rng = random.Random(seed)
    # Spread the callers' first words over one utterance so their turns do not run in lockstep.
    spread_s = len(fixture.frames) * PIECE_S if sessions > 1 else 0.0
    offsets = [rng.uniform(0, spread_s) for _ in range(sessions)]
    audio = base64.b64encode(fixture.audio.astype("<f4").tobytes()).decode("ascii")
    workers: list[_Worker] = []
    try:
        first = 0
        for share in shares:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.loadgen",
                "--worker",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=2**26,  # the answer is one long line
            )
            worker = _Worker(proc, share)
            workers.append(worker)
            config = {
                "port": server.port,
                "token": server.token,
                "cert": str(server.cert),
                "audio": audio,
                "binary": fixture.binary,
                "silence_ms": silence_ms,
                "max_turns": max_turns,
                "offsets": offsets[first : first + share],
                "transport": transport,
            }
            first += share
            await worker.send({"config": config})
        for worker in workers:
            await worker.receive()  # ready: every caller connected and initialised
        begin_at = time.monotonic() + 0.5
        for worker in workers:
            await worker.send({"begin_at": begin_at, "stop_at": begin_at + duration_s})
        await asyncio.sleep(max(0.0, begin_at - time.monotonic()))
        cpu_before = process_cpu(server.pid) if server.pid else None
        answers = [await worker.receive() for worker in workers]
        talk_s = time.monotonic() - begin_at
        server_cpu = process_cpu(server.pid) - cpu_before if cpu_before is not None else None
    finally:
        for worker in workers:
            if worker.proc.returncode is None:
                if worker.proc.stdin is not None:
                    worker.proc.stdin.close()
                try:
                    await asyncio.wait_for(worker.proc.wait(), 10)
                except TimeoutError:
                    worker.proc.kill()
                    await worker.proc.wait()
    records = [CallRecord.from_json(c) for a in answers for c in a["calls"]]
    lags = np.concatenate([np.array(a["load"]["loop_lag_ms"], dtype=np.float64) for a in answers])
    load = LoadStats(
        processes=count,
        cpu_s=sum(float(a["load"]["cpu_s"]) for a in answers),
        talk_s=talk_s,
        loop_lag_p95_ms=pct(lags, 95),
        loop_lag_max_ms=float(lags.max()) if lags.size else float("nan"),
    )
    return PhaseResult(label, sessions, records, talk_s, os.getloadavg()[0], load, server_cpu)


# ---- the worker process ----------------------------------------------------------------------------


async def _lag_monitor(lags_ms: list[float]) -> None:
    """Note how late a short timer fires: the worker's own event-loop saturation."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + LAG_TICK_S
        await asyncio.sleep(LAG_TICK_S)
        lags_ms.append(max(0.0, (loop.time() - due) * 1000))


async def _connect_all(server: ServerHandle, fixture: Fixture, silence_ms: int, n: int) -> list[Caller]:
    gate = asyncio.Semaphore(HANDSHAKES_AT_ONCE)

    async def opened() -> Caller:
        async with gate:
            return await open_caller(server, fixture, silence_ms)

    return list(await asyncio.gather(*(opened() for _ in range(n))))


async def _read_line() -> dict[str, Any]:
    line = await asyncio.to_thread(sys.stdin.readline)
    if not line:
        raise SystemExit("the bench went away")
    answer: dict[str, Any] = json.loads(line)
    return answer


def _write_line(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def worker_main() -> None:
    config = (await _read_line())["config"]
    server = ServerHandle(config["port"], config["token"], Path(config["cert"]), Path("/dev/null"))
    audio = np.frombuffer(base64.b64decode(config["audio"]), dtype="<f4").astype(np.float32)
    fixture = fixture_from_audio(audio, binary=bool(config["binary"]))
    offsets: Sequence[float] = config["offsets"]
    if config["transport"] == "webrtc":
        from bench.webrtc import RtcCallers  # aiortc is imported only where WebRTC calls are made

        async with RtcCallers(server, fixture) as rtc:
            await rtc.connect(len(offsets))
            await _talk(lambda begin_at, stop_at: rtc.talk(offsets, begin_at, stop_at))
        return
    callers = await _connect_all(server, fixture, int(config["silence_ms"]), len(offsets))

    async def talk(begin_at: float, stop_at: float) -> list[CallRecord]:
        turns = int(config["max_turns"])
        await asyncio.gather(*(c.run(begin_at + o, stop_at, turns) for c, o in zip(callers, offsets, strict=True)))
        return [c.record() for c in callers]

    await _talk(talk)


async def _talk(talk: Callable[[float, float], Awaitable[list[CallRecord]]]) -> None:
    """Say ready, wait for the common start, run `talk(begin_at, stop_at)` and answer with its calls."""
    _write_line({"ready": True})
    go = await _read_line()
    begin_at, stop_at = float(go["begin_at"]), float(go["stop_at"])
    lags: list[float] = []
    await asyncio.sleep(max(0.0, begin_at - time.monotonic()))
    cpu_before = time.process_time()
    monitor = asyncio.create_task(_lag_monitor(lags), name="loop-lag")
    try:
        records = await talk(begin_at, stop_at)
    finally:
        monitor.cancel()
    cpu_s = time.process_time() - cpu_before
    _write_line({"calls": [r.as_json() for r in records], "load": {"cpu_s": cpu_s, "loop_lag_ms": lags}})


def main(argv: Sequence[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    if args != ["--worker"]:
        raise SystemExit("bench.loadgen is started by the benchmarks (bench.realtime, bench.scale) with --worker")
    asyncio.run(worker_main())


if __name__ == "__main__":
    main()
