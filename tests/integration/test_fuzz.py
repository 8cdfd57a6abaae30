"""Fuzzing the realtime API over loopback with hypothesis: thousands of random and mutated frames.

The server is a real `python -m omni_server` process (hypothesis drives plain functions, one
connection per example; a server thread in this process would also disturb hypothesis' checks on the
global `random`), beside a well-behaved caller in a thread that keeps taking turns. Whatever the frames
are, the server must stay up, log no error, and the other caller must finish its turns.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import TOKEN, timeout
from tests.integration.realtime_client import RawClient

MAX_MESSAGE_BYTES = 256 * 1024
EXAMPLES = int(os.environ.get("OMNI_FUZZ_EXAMPLES", "20"))  # connections of 100-140 frames; raise for longer
EVENT_TYPES = [
    "session.init",
    "input.append",
    "input.commit",
    "session.close",
    "client.stats",
    "input_audio_buffer.append",
]


class ServerProcess:
    """`python -m omni_server --engine tiny` on loopback: the fuzzed server, in its own process."""

    def __init__(self, tmp_path: Path) -> None:
        args = ["--engine", "tiny", "--host", "127.0.0.1", "--port", "0", "--token", TOKEN, "--no-tls"]
        args += ["--log-json", "--max-message-bytes", str(MAX_MESSAGE_BYTES), "--max-frame-bytes", "20000"]
        args += ["--max-new-tokens", "48"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path.cwd())}
        env.pop("PYTHONASYNCIODEBUG", None)  # robustness is tested here, not blocking; debug mode triples the time
        self.log_path = tmp_path / "server.log"
        self._log = self.log_path.open("w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "omni_server", *args], stderr=self._log, env=env)
        self.port = self._wait_for_port()

    def logs(self) -> list[dict[str, Any]]:
        """The server's JSON log lines; anything else on stderr (a stray warning, a traceback printed by
        Python itself) comes back as level `raw`, so a check on levels reports it."""
        return [_entry(line) for line in self.log_path.read_text().splitlines()]

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + timeout(60)
        while time.monotonic() < deadline:
            for entry in self.logs():
                if entry["message"].startswith("ready"):
                    port = [e for e in self.logs() if e["message"].startswith("listening on port")][0]
                    return int(port["message"].split()[3].rstrip(";"))
            assert self.proc.poll() is None, self.log_path.read_text()
            time.sleep(0.1)
        raise TimeoutError("the server did not become ready")

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime"

    def healthy(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout(10))
        try:
            conn.request("GET", "/readyz")
            return conn.getresponse().status == 200
        finally:
            conn.close()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout(30))
        self._log.close()
        return code


async def open_client(url: str) -> RawClient:
    ws = await connect(
        url,
        additional_headers={"Authorization": f"Bearer {TOKEN}"},
        subprotocols=["map.realtime"],  # type: ignore[list-item]
        max_size=None,
        ping_interval=None,  # keepalive pings draw from the global `random`, which hypothesis watches
        max_queue=None,  # keep reading while sending, so a close from the server is seen at once
    )
    return RawClient(ws)


class GoodCaller:
    """Takes manual turns until told to stop; counts the replies that completed."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stop = threading.Event()
        self.completed = 0
        self.problems: list[dict[str, Any]] = []
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run(), debug=False), name="good-caller")

    async def _run(self) -> None:
        client = await open_client(self.url)
        await client.start(turn_detection={"type": "none"})
        noise = np.random.default_rng(2).uniform(-0.3, 0.3, 16000).astype(np.float32)
        while not self.stop.is_set() or self.completed < 2:
            await client.append(noise)
            await client.send("input.commit")
            done = await client.until("response.done", limit_s=60)
            if done["response"]["status"] == "completed":
                self.completed += 1
            await asyncio.sleep(0.5)  # a caller who listens to the reply before speaking again
        self.problems = client.of_type("error") + client.of_type("session.closed")
        await client.close()


# ---- frames ---------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=6,
)
pcm = st.binary(max_size=6000).map(lambda b: base64.b64encode(b).decode())
float_pcm = st.lists(st.floats(width=32), max_size=800).map(
    lambda xs: base64.b64encode(np.asarray(xs, "<f4").tobytes()).decode()
)
bad_base64 = st.text(alphabet="ABCD=+/-_*!\n ", max_size=200)


@st.composite
def event(draw: st.DrawFn) -> dict[str, Any]:
    """A valid-looking event whose fields may hold any type or value."""
    kind = draw(st.sampled_from(EVENT_TYPES) | st.text(max_size=20))
    body: dict[str, Any] = {"type": kind}
    if kind in ("input.append", "input_audio_buffer.append"):
        fields = st.fixed_dictionaries(
            {},
            optional={
                "audio": pcm | float_pcm | bad_base64 | json_values,
                "video_frames": st.lists(pcm | bad_base64, max_size=2) | json_values,
                "force_listen": json_values,
            },
        )
        body["input"] = draw(fields | json_values)
    elif kind == "session.init":
        payload = st.fixed_dictionaries(
            {},
            optional={
                "mode": st.sampled_from(["assistant", "roleplay", "voice_cloning"]) | json_values,
                "language": st.sampled_from(["en", "zh"]) | json_values,
                "config": st.dictionaries(st.sampled_from(["max_tokens", "temperature", "max_kv_tokens"]), json_values),
                "turn_detection": st.dictionaries(
                    st.sampled_from(["type", "threshold", "silence_ms", "min_speech_ms", "barge_in"]), json_values
                ),
                "voice": st.dictionaries(st.just("ref_audio_base64"), pcm | bad_base64 | json_values),
                "max_slice_nums": json_values,
            },
        )
        body["payload"] = draw(payload | json_values)
    else:
        body.update(draw(st.dictionaries(st.sampled_from(["reason", "underruns", "played_s"]), json_values)))
    return body


Edit = tuple[int, str, str]  # (position, flip | drop | dup, character)


def mutate(text: str, edits: list[Edit]) -> str:
    """Flip, drop or repeat a few characters of a valid frame."""
    chars = list(text)
    for position, op, char in edits:
        if not chars:
            break
        i = position % len(chars)
        if op == "flip":
            chars[i] = char
        elif op == "drop":
            del chars[i]
        else:
            chars.insert(i, chars[i] * 20)
    return "".join(chars)


Frame = str | bytes | tuple[str, int]  # a tuple stands for `text * count` (kept short in reports)


@st.composite
def frame(draw: st.DrawFn) -> Frame:
    choice = draw(st.integers(0, 19))
    if choice == 0:
        return draw(st.binary(max_size=512))
    if choice == 1:
        return draw(st.text(max_size=512))
    if choice == 2:  # deep nesting
        return (draw(st.sampled_from(["[", '{"a":'])), draw(st.integers(100, 5_000)))
    if choice == 3:  # just under and just over the message size limit
        return ("x", draw(st.sampled_from([MAX_MESSAGE_BYTES - 1, MAX_MESSAGE_BYTES + 1])))
    text = json.dumps(draw(event()), allow_nan=True)
    if choice < 12:
        edits = st.tuples(st.integers(0, 10**6), st.sampled_from(["flip", "drop", "dup"]), st.characters())
        return mutate(text, draw(st.lists(edits, min_size=1, max_size=4)))
    return text


async def fire(url: str, init_first: bool, frames: list[Frame]) -> None:
    """Send the frames on one connection, then a marker; the marker's error proves they were all read."""
    client = await open_client(url)
    try:
        if init_first:
            await client.start(turn_detection={"type": "none"})
        for f in frames:
            await client.ws.send(f[0] * f[1] if isinstance(f, tuple) else f)
        await client.send("fuzz.end")
        async with asyncio.timeout(timeout(30)):
            async for raw in client.ws:
                event_ = json.loads(raw)
                assert isinstance(event_, dict) and isinstance(event_.get("type"), str)
                if event_["type"] == "error" and "fuzz.end" in event_["error"]["message"]:
                    break
    except ConnectionClosed:
        pass  # a frame over the size limit, or a session.close among the frames, may end this connection
    finally:
        await client.ws.close()


# Usually 1.5-2.5 min here; some fuzzed connections end only after a ~10 s close handshake, so give it room.
@pytest.mark.timeout(300)
def test_random_frames_never_hurt_the_server_or_another_call(tmp_path: Path) -> None:
    """Thousands of random or mutated frames on 20 connections; the server stays ready, a call beside completes."""
    fuzzed = ServerProcess(tmp_path)
    good = GoodCaller(fuzzed.url)
    good.thread.start()
    sent = [0]

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.generate],  # shrinking a failure can take minutes; the failing frames are printed as they are
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )
    @given(init_first=st.booleans(), frames=st.lists(frame(), min_size=100, max_size=140))
    def fuzz(init_first: bool, frames: list[Frame]) -> None:
        sent[0] += len(frames)
        asyncio.run(fire(fuzzed.url, init_first, frames), debug=False)  # debug checks are for the server

    try:
        fuzz()
        assert fuzzed.healthy()
    finally:
        good.stop.set()
        good.thread.join(timeout(120))
        assert fuzzed.stop() == 0
    assert sent[0] >= 100 * EXAMPLES  # thousands of frames (2,000+ by default)
    assert good.completed >= 2 and not good.problems
    assert not [e for e in fuzzed.logs() if e["level"] in ("error", "critical", "raw")]


def _entry(line: str) -> dict[str, Any]:
    try:
        entry = json.loads(line)
    except json.JSONDecodeError:
        return {"level": "raw", "message": line}
    return entry if isinstance(entry, dict) else {"level": "raw", "message": line}
