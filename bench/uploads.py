"""Uploads benchmark: a call's turn latency while people upload long voice files in parallel.

`python -m bench.uploads` starts the server as a separate process (tiny engine at `--engine-cost
minicpmo-2.6`, so a reply takes the real model's time), and one caller takes `--turns` manual turns
(1 s of speech sent in real time, then `input.commit`), measuring at the client the time from the
commit to the first `response.output_audio.delta`. It does so alone, then while `--uploaders`
library sockets each upload a `--file-s`-second ogg/opus voice file, over and over (the server
decodes and prepares each one, then refuses it as longer than a voice may be: the work is the
same). The uploads' own pace is reported too. `--server-src DIR` runs the server from another
checkout (for an A/B against an earlier commit).

Must not import: anything from `omni_server` (the server is a black box behind its wire protocol).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import ssl
import statistics
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from websockets.asyncio.client import ClientConnection, connect

from bench.realtime import Samples, ServerHandle, espeak, machine_lines, pct, server_process
from tests.audio_files import encode


def _context(server: ServerHandle) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(server.cert))


async def _socket(server: ServerHandle, path: str, protocol: str, user: str | None = None) -> ClientConnection:
    headers = {"Authorization": f"Bearer {server.token}"} | ({"X-Omni-User": user} if user else {})
    return await connect(
        f"wss://127.0.0.1:{server.port}{path}",
        ssl=_context(server),
        additional_headers=headers,
        subprotocols=[protocol],  # type: ignore[list-item]
        max_size=None,
        open_timeout=60,
        ping_interval=None,
    )


def _new_user(server: ServerHandle) -> str:
    request = urllib.request.Request(
        f"https://127.0.0.1:{server.port}/v1/user", headers={"Authorization": f"Bearer {server.token}"}
    )
    with urllib.request.urlopen(request, context=_context(server), timeout=30) as response:
        return str(json.loads(response.read())["credential"])


async def _turns(server: ServerHandle, speech: Samples, turns: int) -> list[float]:
    """Commit → first reply audio, in ms, for each of `turns` manual turns of one call."""
    ws = await _socket(server, "/v1/realtime?mode=audio", "map.realtime")
    try:
        while json.loads(await ws.recv())["type"] != "session.queue_done":
            pass
        await ws.send(json.dumps({"type": "session.init", "payload": {"turn_detection": {"type": "none"}}}))
        while json.loads(await ws.recv())["type"] != "session.created":
            pass
        latencies = []
        for _ in range(turns):
            for start in range(0, len(speech), 1600):  # 100 ms pieces, in real time
                piece = speech[start : start + 1600].astype("<f4").tobytes()
                await ws.send(json.dumps({"type": "input.append", "input": {"audio": _b64(piece)}}))
                await asyncio.sleep(0.1)
            committed = time.monotonic()
            await ws.send(json.dumps({"type": "input.commit"}))
            first = None
            while (event := json.loads(await ws.recv()))["type"] != "response.done":
                if event["type"] == "response.output_audio.delta" and first is None:
                    first = time.monotonic()
            if first is not None:
                latencies.append((first - committed) * 1000)
            await asyncio.sleep(0.5)
        return latencies
    finally:
        await ws.close()


async def _upload_loop(
    server: ServerHandle, data: bytes, stop: asyncio.Event, done: list[float], answers: Counter[str]
) -> None:
    """Upload `data` as a voice again and again until `stop`: each prepared one's round trip goes to `done`,
    each answer's type or error code to `answers`; told `busy`, wait a second as a page would."""
    ws = await _socket(server, "/v1/library", "omni.library", await asyncio.to_thread(_new_user, server))
    try:
        n = 0
        while not stop.is_set():
            n += 1
            started = time.monotonic()
            await ws.send(json.dumps({"type": "voice.add", "id": str(n), "name": "x", "content_type": "audio/ogg"}))
            await ws.send(data)
            while (reply := json.loads(await ws.recv())).get("id") != str(n):
                pass
            answer = reply["error"]["code"] if reply["type"] == "error" else reply["type"]
            answers[answer] += 1
            if answer == "busy":
                await asyncio.sleep(1.0)
            else:
                done.append(time.monotonic() - started)
    finally:
        await ws.close()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


async def bench(args: argparse.Namespace) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        speech = espeak(workdir, "Hello there. What is the weather like today?")[:16000]
        long_clip = np.tile(espeak(workdir, "Tell me a short story about a small robot."), 60)
        upload = encode(long_clip[: int(args.file_s * 16000)], "ogg")
        # Each upload is decoded whole and prepared; its owner's library fills (20 voices), then it is refused.
        extra = ["--engine-cost", "minicpmo-2.6", "--max-voice-input-s", str(args.file_s + 10)]
        async with server_process(workdir, extra) as server:
            alone = await _turns(server, speech, args.turns)
            stop, done, answers = asyncio.Event(), list[float](), Counter[str]()
            async with asyncio.TaskGroup() as tg:
                for _ in range(args.uploaders):
                    tg.create_task(_upload_loop(server, upload, stop, done, answers))
                await asyncio.sleep(2.0)  # let the uploads get going
                loaded = await _turns(server, speech, args.turns)
                stop.set()
    lines = [*machine_lines(), f"load average at the end: {os.getloadavg()[0]:.2f}", ""]
    lines += [f"| phase | turns | commit → first audio median | p95 | uploads of {args.file_s:.0f} s done |"]
    lines += ["|---|---|---|---|---|"]
    for label, xs, ups in (("alone", alone, "–"), (f"{args.uploaders} uploaders", loaded, str(len(done)))):
        ms = np.asarray(xs, dtype=np.float64)
        lines.append(f"| {label} | {len(xs)} | {statistics.median(xs):.0f} ms | {pct(ms, 95):.0f} ms | {ups} |")
    if done:
        trips = np.asarray(done, dtype=np.float64)
        lines.append(f"\nupload round trip: median {statistics.median(done):.1f} s, p95 {pct(trips, 95):.1f} s")
    lines.append(f"answers: {dict(answers)}")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="bench.uploads", description=__doc__.splitlines()[0])
    p.add_argument("--turns", type=int, default=8, help="Turns in each phase.")
    p.add_argument("--uploaders", type=int, default=12, help="Library sockets uploading at once.")
    p.add_argument("--file-s", type=float, default=115.0, help="Length of each uploaded file.")
    p.add_argument("--server-src", default="", help="Run the server from this source tree (A/B).")
    args = p.parse_args(argv)
    if args.server_src:  # the server process (`python -m`, so its working directory first) imports from there
        os.environ["PYTHONPATH"] = str(Path(args.server_src).resolve())
        os.chdir(args.server_src)
    with contextlib.suppress(KeyboardInterrupt):
        print("\n".join(asyncio.run(bench(args))))


if __name__ == "__main__":
    main()
