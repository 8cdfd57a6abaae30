"""`python -m omni_server` as a real process: start, a call, SIGTERM mid-reply, a clean bounded exit.

Also checks what the process leaves behind: JSON log lines with session ids and no transcript, and no
user media anywhere under its working, temporary and certificate directories.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import sys
from pathlib import Path
from typing import Any

import numpy as np
from websockets.asyncio.client import connect

from tests.conftest import TOKEN, timeout
from tests.integration.realtime_client import RawClient

MEDIA = {".wav", ".pcm", ".raw", ".f32", ".npy", ".jpg", ".jpeg", ".png", ".webm", ".ogg", ".mp3", ".mp4", ".txt"}


class Process:
    """The server process and its JSON log lines, read as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.logs: list[dict[str, Any]] = []

    async def until_log(self, prefix: str) -> dict[str, Any]:
        assert self.proc.stderr is not None
        async with asyncio.timeout(timeout(60)):
            while True:
                line = await self.proc.stderr.readline()
                assert line, f"the server exited before logging {prefix!r}: {self.logs[-5:]}"
                entry = json.loads(line)  # every line is one JSON object
                self.logs.append(entry)
                if entry["message"].startswith(prefix):
                    return entry

    async def rest_of_logs(self) -> None:
        assert self.proc.stderr is not None
        for line in (await self.proc.stderr.read()).splitlines():
            self.logs.append(json.loads(line))


async def start(tmp_path: Path) -> tuple[Process, int]:
    work, tmp = tmp_path / "work", tmp_path / "tmp"
    work.mkdir()
    tmp.mkdir()
    args = ["--engine", "tiny", "--host", "127.0.0.1", "--port", "0", "--token", TOKEN, "--log-json"]
    args += ["--ssl-dir", str(tmp_path / "ssl"), "--max-new-tokens", "200", "--engine-cost", "minicpmo-2.6"]
    env = {**os.environ, "TMPDIR": str(tmp), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path.cwd())}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "omni_server", *args, cwd=work, env=env, stderr=asyncio.subprocess.PIPE
    )
    server = Process(proc)
    listening = await server.until_log("listening on port")
    port = int(listening["message"].split()[3].rstrip(";"))
    await server.until_log("ready")
    return server, port


async def test_sigterm_ends_calls_cleanly_and_leaves_no_media(tmp_path: Path) -> None:
    """SIGTERM mid-reply: the reply ends with response.done, then session.closed(server_shutdown); exit 0."""
    server, port = await start(tmp_path)
    context = ssl.create_default_context(cafile=str(tmp_path / "ssl" / "cert.pem"))
    ws = await connect(
        f"wss://127.0.0.1:{port}/v1/realtime?mode=audio",
        ssl=context,
        additional_headers={"Authorization": f"Bearer {TOKEN}"},
        subprotocols=["map.realtime"],  # type: ignore[list-item]
        max_size=None,
    )
    client = RawClient(ws)
    created = await client.start(turn_detection={"type": "none"})
    await client.append(np.random.default_rng(0).uniform(-0.3, 0.3, 16000).astype(np.float32))
    await client.send("input.commit")
    await client.until("response.output_audio.delta")
    server.proc.send_signal(signal.SIGTERM)
    closed = await client.until("session.closed")
    assert closed["reason"] == "server_shutdown"
    types = [e["type"] for e in client.events]
    done = client.of_type("response.done")
    assert len(done) == 1 and done[0]["response"]["status"] == "interrupted"  # stopped between chunks
    assert types.index("response.done") < types.index("session.closed")
    assert "response.listen" not in types  # nothing queued on the client is thrown away
    async with asyncio.timeout(timeout(20)):
        assert await server.proc.wait() == 0
    await server.rest_of_logs()

    ended = [e for e in server.logs if e["message"] == "call ended"]
    assert ended and ended[0]["session_id"] == created["session_id"] and ended[0]["reason"] == "server_shutdown"
    said = "".join(e["text"] for e in client.of_type("response.output_text.delta"))
    logged = json.dumps(server.logs, ensure_ascii=False)
    assert not [w for w in said.split() if len(w) >= 4 and w in logged]

    assert sorted(p.name for p in (tmp_path / "ssl").iterdir()) == ["cert.pem", "key.pem"]
    assert not list((tmp_path / "work").rglob("*"))
    # Libraries keep small bookkeeping files in TMPDIR (torch's compile cache folder, a session id);
    # one second of the call's audio would be 64 kB, a camera frame tens of kB.
    for left in (tmp_path / "tmp").rglob("*"):
        assert left.is_dir() or (left.suffix not in MEDIA and left.stat().st_size < 4096), left
