"""Media paths compared: one voice call over WebRTC and one over the WebSocket API, same fixture, same turns.

Run by `make bench` (after bench.realtime's phases) or alone as `python -m bench.webrtc`. The server is a
separate process on loopback (as in bench.realtime). Each call speaks the fixture in real time, waits for
the reply to play out, pauses 0.4 s and speaks again, for `--turns` turns. Measured per call:

- *first audio*: from the moment the last speech sample went out (the WebSocket piece holding it was
  sent; the WebRTC frame holding it left the microphone track) to the first reply audio received (the
  first `response.output_audio.delta`; the first reply frame on the track louder than -60 dBFS);
- *bytes per second each way*, over the whole call including pauses: WebSocket = the JSON text of
  every frame; WebRTC = bytes through the DTLS transport (SRTP audio, RTCP and the data channel's SCTP),
  both without TLS/TCP/UDP/IP headers.

The bench client is aiortc, kept on loopback like the server; aiortc's Opus encoder is fixed at 96 kbit/s,
more than a browser sends. So the page itself is measured too: a voice and a video call in Debian's
Chromium (fake mic looping the fixture, fake camera), bytes each way from its transport stats.

Must not import anything from `omni_server` (the server is a black box behind its protocol).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import json
import ssl
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aioice.ice
import av
import numpy as np
import soundfile as sf
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from websockets.asyncio.client import ClientConnection, connect

from bench.realtime import (
    GAP_AFTER_REPLY_S,
    INPUT_RATE_HZ,
    TURN_TIMEOUT_S,
    CallRecord,
    Fixture,
    Samples,
    ServerHandle,
    Turn,
    make_fixture,
    open_caller,
    pct,
    server_process,
)

MIC_RATE_HZ = 48_000
FRAME_SAMPLES = 960  # 20 ms at 48 kHz
AUDIBLE_RMS = 0.001  # -60 dBFS: the server's silence frames decode to (almost) exact zeros
QUIET_AFTER_REPLY_S = 0.3


# ---- the WebRTC caller -----------------------------------------------------------------------------


class Microphone(MediaStreamTrack):
    """Plays queued utterances at 48 kHz in real time (silence between them) and notes when each ends."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._pending = np.zeros(0, np.int16)
        self._end_left = -1  # samples still to send before the current utterance's last speech sample
        self.end_sent_at: float | None = None
        self.ended = asyncio.Event()  # set once the current utterance's last speech sample has been sent
        self._start: float | None = None
        self._pts = 0

    def say(self, speech: Samples, end_sample: int) -> None:
        ratio = MIC_RATE_HZ // INPUT_RATE_HZ
        up = np.interp(np.arange(len(speech) * ratio) / ratio, np.arange(len(speech)), speech)
        self._pending = np.clip(up * 32767, -32768, 32767).astype(np.int16)
        self._end_left, self.end_sent_at = end_sample * ratio, None
        self.ended.clear()

    async def recv(self) -> av.AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self._pts / MIC_RATE_HZ - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        out = np.zeros(FRAME_SAMPLES, np.int16)
        take = min(FRAME_SAMPLES, len(self._pending))
        out[:take], self._pending = self._pending[:take], self._pending[take:]
        if 0 <= self._end_left < FRAME_SAMPLES:
            self.end_sent_at = time.monotonic()
            self.ended.set()
        self._end_left -= FRAME_SAMPLES if self._end_left >= 0 else 0
        frame = av.AudioFrame.from_ndarray(out.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = MIC_RATE_HZ, self._pts, fractions.Fraction(1, MIC_RATE_HZ)
        self._pts += FRAME_SAMPLES
        return frame


@dataclass
class CallResult:
    path: str
    first_audio_s: list[float] = field(default_factory=list)
    failed: int = 0
    wall_s: float = 0.0
    up_bytes: int = 0
    down_bytes: int = 0


class RtcCaller:
    """One WebRTC voice call: the fixture on the mic track, events on the channel, the reply track heard."""

    def __init__(self, ws: ClientConnection, pc: RTCPeerConnection) -> None:
        self.ws, self.pc = ws, pc
        self.mic = Microphone()
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.last_loud_at = 0.0
        self.first_loud_at: float | None = None
        self.done = asyncio.Event()

    async def hear(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            samples = frame.to_ndarray().astype(np.float32) / 32768  # type: ignore[union-attr]
            if float(np.sqrt(np.mean(samples**2))) > AUDIBLE_RMS:
                now = time.monotonic()
                self.last_loud_at = now
                if self.first_loud_at is None:
                    self.first_loud_at = now

    async def turn(self, fixture: Fixture, speech: Samples, result: CallResult) -> None:
        self.first_loud_at, self.done = None, asyncio.Event()
        self.mic.say(speech, fixture.end_sample)
        try:
            async with asyncio.timeout(fixture.speech_s + TURN_TIMEOUT_S):
                while True:  # a reply withdrawn when the user went on (`response.cancelled`) did not end the turn
                    await self.done.wait()
                    await self.played_out()
                    await self.mic.ended.wait()
                    if self.done.is_set():
                        break
        except TimeoutError:
            result.failed += 1
        if self.first_loud_at is not None and self.mic.end_sent_at is not None:
            result.first_audio_s.append(self.first_loud_at - self.mic.end_sent_at)
        await asyncio.sleep(GAP_AFTER_REPLY_S)

    async def played_out(self) -> None:
        """Until the reply has been heard and the track has been quiet for a moment."""
        while True:
            left = self.last_loud_at + QUIET_AFTER_REPLY_S - time.monotonic()
            if self.first_loud_at is not None and left <= 0:
                return
            await asyncio.sleep(max(left, 0.02))

    def on_event(self, raw: str) -> None:
        event = json.loads(raw)
        kind = event.get("type")
        if kind == "response.created":  # audio heard before belonged to a reply withdrawn when the user went on
            self.first_loud_at = None
        elif kind == "response.cancelled":
            self.done.clear()
        elif kind == "response.done" and event.get("response", {}).get("status") != "cancelled":
            self.done.set()


@contextlib.asynccontextmanager
async def rtc_call(server: ServerHandle) -> AsyncIterator[RtcCaller]:
    context = ssl.create_default_context(cafile=str(server.cert))
    ws = await connect(
        f"wss://127.0.0.1:{server.port}/v1/realtime?mode=audio&transport=webrtc",
        ssl=context,
        additional_headers={"Authorization": f"Bearer {server.token}"},
        subprotocols=["map.realtime"],  # type: ignore[list-item]
    )
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    caller = RtcCaller(ws, pc)
    channel = pc.createDataChannel("events")
    channel.on("message", caller.on_event)
    opened = asyncio.Event()
    channel.on("open", opened.set)
    hearing: list[asyncio.Task[None]] = []  # the reply track's drain, cancelled at the end
    pc.on("track", lambda track: hearing.append(asyncio.create_task(caller.hear(track))))
    pc.addTrack(caller.mic)
    try:
        while json.loads(await ws.recv()).get("type") != "session.queue_done":
            pass
        await pc.setLocalDescription(await pc.createOffer())
        await ws.send(json.dumps({"type": "session.init", "payload": {}}))
        await ws.send(json.dumps({"type": "webrtc.offer", "sdp": pc.localDescription.sdp}))
        while (answer := json.loads(await ws.recv())).get("type") != "webrtc.answer":
            pass
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        await asyncio.wait_for(opened.wait(), 30)
        yield caller
    finally:
        await pc.close()
        await ws.close()
        for task in hearing:
            task.cancel()


def loopback_ice() -> None:
    """Gather ICE candidates on 127.0.0.1 only (the server is on loopback)."""

    def loopback(use_ipv4: bool = True, use_ipv6: bool = True) -> list[str]:
        return ["127.0.0.1"]

    aioice.ice.get_host_addresses = loopback


class RtcCallers:
    """WebRTC calls held open together, for `bench.loadgen`'s workers: connect them all, then talk."""

    def __init__(self, server: ServerHandle, fixture: Fixture) -> None:
        self.server, self.fixture = server, fixture
        self.callers: list[RtcCaller] = []
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> RtcCallers:
        loopback_ice()
        await self._stack.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def connect(self, n: int) -> None:
        for _ in range(n):  # one at a time: each negotiation (DTLS handshake) costs a burst of CPU
            self.callers.append(await self._stack.enter_async_context(rtc_call(self.server)))

    async def talk(self, offsets: Sequence[float], begin_at: float, stop_at: float) -> list[CallRecord]:
        """Every call speaks the fixture, hears the reply out, pauses, and again, until `stop_at`."""
        pairs = zip(self.callers, offsets, strict=True)
        return list(await asyncio.gather(*(self._talk(c, begin_at + o, stop_at) for c, o in pairs)))

    async def _talk(self, caller: RtcCaller, start_at: float, stop_at: float) -> CallRecord:
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        turns = []
        while time.monotonic() < stop_at:
            result = CallResult("WebRTC")
            await caller.turn(self.fixture, self.fixture.audio, result)
            end = caller.mic.end_sent_at or 0.0
            turn = Turn(end_sent_at=end, failed=not result.first_audio_s)
            if result.first_audio_s:
                turn.first_audio_at = end + result.first_audio_s[0]
                turn.done_at = time.monotonic()
            turns.append(turn)
        await caller.ws.send(json.dumps({"type": "session.close"}))
        return CallRecord(turns, [], [])


def dtls_bytes(stats: Any) -> tuple[int, int]:
    sent = sum(s.bytesSent for s in stats.values() if s.type == "transport")
    received = sum(s.bytesReceived for s in stats.values() if s.type == "transport")
    return sent, received


async def webrtc_call(server: ServerHandle, fixture: Fixture, speech: Samples, turns: int) -> CallResult:
    result = CallResult("WebRTC")
    async with rtc_call(server) as caller:
        start = time.monotonic()
        await asyncio.sleep(GAP_AFTER_REPLY_S)
        for _ in range(turns):
            await caller.turn(fixture, speech, result)
        result.wall_s = time.monotonic() - start
        result.up_bytes, result.down_bytes = dtls_bytes(await caller.pc.getStats())
        await caller.ws.send(json.dumps({"type": "session.close"}))
    return result


# ---- the WebSocket caller, counted -----------------------------------------------------------------


class CountingSocket:
    """The caller's WebSocket, counting the bytes of every frame each way."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.sent = self.received = 0

    async def send(self, message: str) -> None:
        self.sent += len(message.encode())
        await self.ws.send(message)

    async def __aiter__(self) -> AsyncIterator[str]:
        async for message in self.ws:
            self.received += len(message.encode() if isinstance(message, str) else message)
            yield message

    async def close(self) -> None:
        await self.ws.close()


async def websocket_call(server: ServerHandle, fixture: Fixture, turns: int, silence_ms: int) -> CallResult:
    caller = await open_caller(server, fixture, silence_ms)
    counted = CountingSocket(caller.ws)
    caller.ws = counted  # type: ignore[assignment]
    start = time.monotonic()
    await caller.run(start, start + 3600, turns)
    result = CallResult("WebSocket", wall_s=time.monotonic() - start, up_bytes=counted.sent)
    result.down_bytes = counted.received
    for t in caller.turns:
        if t.first_audio_at is None:
            result.failed += 1
        else:
            result.first_audio_s.append(t.first_audio_at - t.end_sent_at)
    return result


# ---- the page in Chromium --------------------------------------------------------------------------


@dataclass
class BrowserCall:
    mode: str
    seconds: float
    up_bytes: int
    down_bytes: int
    heard_s: float


def fake_mic_wav(speech: Samples, path: Path, pause_s: float = 4.0) -> Path:
    """The utterance and a pause long enough for the reply to play out, at 48 kHz; Chromium loops it."""
    ratio = MIC_RATE_HZ // INPUT_RATE_HZ
    up = np.interp(np.arange(len(speech) * ratio) / ratio, np.arange(len(speech)), speech)
    sf.write(path, np.concatenate([up, np.zeros(int(pause_s * MIC_RATE_HZ))]), MIC_RATE_HZ, subtype="PCM_16")
    return path


async def browser_calls(server: ServerHandle, wav: Path, seconds: float) -> list[BrowserCall]:
    """A voice call and a video call from the page (its default, WebRTC), measured by the page's getStats()."""
    from playwright.async_api import async_playwright

    from tests.browser.conftest import CHROMIUM, FAKE_MEDIA_ARGS

    args = [*FAKE_MEDIA_ARGS, "--use-fake-ui-for-media-stream", f"--use-file-for-fake-audio-capture={wav}"]
    calls = []
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        for mode, button in (("voice", "#voice-call"), ("video", "#video-call")):
            context = await browser.new_context(ignore_https_errors=True)
            page = await context.new_page()
            await page.goto(f"https://127.0.0.1:{server.port}/?token={server.token}")
            await page.click(button)
            await page.wait_for_function("window.omni && window.omni.rtc && window.omni.rtc.transportBytesSent")
            first = await page.evaluate("window.omni.rtc")
            start = time.monotonic()
            await asyncio.sleep(seconds)
            last = await page.evaluate("window.omni.rtc")
            elapsed = time.monotonic() - start
            up = last["transportBytesSent"] - first["transportBytesSent"]
            down = last["transportBytesReceived"] - first["transportBytesReceived"]
            calls.append(BrowserCall(mode, elapsed, up, down, (last["heardMs"] - first["heardMs"]) / 1000))
            await page.click("#hangup")
            await context.close()
        await browser.close()
    return calls


def browser_table(calls: Sequence[BrowserCall]) -> list[str]:
    lines = ["| page call (WebRTC) | measured s | up KB/s | down KB/s | reply audible s |", "|---|---|---|---|---|"]
    for c in calls:
        lines.append(
            f"| {c.mode} | {c.seconds:.0f} | {c.up_bytes / c.seconds / 1000:.1f} | {c.down_bytes / c.seconds / 1000:.1f} "
            f"| {c.heard_s:.1f} |"
        )
    return lines


# ---- report ----------------------------------------------------------------------------------------


def paths_table(results: Sequence[CallResult]) -> list[str]:
    lines = [
        "| path | turns | failed | first audio p50 / p95 ms | up KB/s | down KB/s | call s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ms = np.array(r.first_audio_s, dtype=np.float64) * 1000
        lines.append(
            f"| {r.path} | {len(r.first_audio_s) + r.failed} | {r.failed} | {pct(ms, 50):.0f} / {pct(ms, 95):.0f} "
            f"| {r.up_bytes / r.wall_s / 1000:.1f} | {r.down_bytes / r.wall_s / 1000:.1f} | {r.wall_s:.1f} |"
        )
    return lines


async def compare_paths(
    server: ServerHandle, fixture: Fixture, turns: int, silence_ms: int, *, browser_s: float, workdir: Path
) -> list[str]:
    """One call over each media path, one after the other, against a running server; then the page's calls."""
    loopback_ice()
    speech = fixture.audio
    results = [
        await websocket_call(server, fixture, turns, silence_ms),
        await webrtc_call(server, fixture, speech, turns),
    ]
    lines = [
        f"Media paths, one voice call each, {turns} turns (first audio: end of speech sent → first reply audio "
        "received; bytes each way over the whole call, pauses included; WebSocket: JSON frames, WebRTC: "
        "DTLS transport payload; the WebRTC client is aiortc, whose Opus encoder sends 96 kbit/s):",
        "",
        *paths_table(results),
    ]
    if browser_s > 0:
        calls = await browser_calls(server, fake_mic_wav(speech, workdir / "mic48k.wav"), browser_s)
        lines += [
            "",
            f"The page in Chromium (its own Opus and VP8 settings), {browser_s:.0f} s of each call while the fake "
            "mic loops the fixture and a 4 s pause, bytes from the page's transport stats:",
            "",
            *browser_table(calls),
        ]
    return lines


async def main_async(args: argparse.Namespace) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="omni-bench-") as tmp:
        fixture = make_fixture(Path(tmp))
        flags = ["--vad-silence-ms", str(args.vad_silence_ms), "--engine-cost", args.engine_cost]
        async with server_process(Path(tmp), flags) as server:
            return await compare_paths(
                server, fixture, args.turns, args.vad_silence_ms, browser_s=args.browser_s, workdir=Path(tmp)
            )


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="bench.webrtc", description=__doc__.splitlines()[0])
    p.add_argument("--turns", type=int, default=4, help="Turns per call.")
    p.add_argument("--vad-silence-ms", type=int, default=500, help="Passed to the server.")
    p.add_argument("--engine-cost", default="none", help="Passed to the server.")
    p.add_argument("--browser-s", type=float, default=20.0, help="Seconds of each page call in Chromium (0 skips).")
    sys.stdout.write("\n".join(asyncio.run(main_async(p.parse_args(argv)))) + "\n")


if __name__ == "__main__":
    main()
