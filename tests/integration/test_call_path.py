"""One call path: the socket is read from its first frame in the call's task group, on both transports.

A caller is read while it waits in the queue and while its WebRTC connection comes up; a set-up that
never arrives is a `timeout` error; a reader that fails ends its call at once (not after the idle
timeout); and nothing a client reports in `client.stats` can break the reader or the metrics.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from omni_server.app import MAX_UNREAD_MESSAGES, OmniServer
from omni_server.engine.tiny import build_tiny_engine
from tests.conftest import server_settings, timeout
from tests.integration.realtime_client import RawClient, b64_audio
from tests.integration.webrtc_client import WebRtcClient


async def test_no_session_init_in_time_is_a_timeout_error_on_both_transports(tmp_path: Path) -> None:
    """After session.queue_done, silence (or an offer without session.init) gets `error {code: timeout}`."""
    async with OmniServer(server_settings(tmp_path, init_timeout_s=0.5), build_tiny_engine()) as server:
        client = await RawClient.connect(server)
        error = await client.until("error")
        assert error["error"]["code"] == "timeout" and "session.init" in error["error"]["message"]
        assert (await client.until("session.closed"))["reason"] == "error"
        webrtc = await WebRtcClient.connect(server)
        await webrtc.signal_until("session.queue_done")
        await webrtc.signal("webrtc.offer", sdp="v=0\r\n")
        error = await webrtc.signal_until("error")
        assert error["error"]["code"] == "timeout" and "webrtc.offer" in error["error"]["message"]
        assert (await webrtc.signal_until("session.closed"))["reason"] == "error"
        await webrtc.close()
        assert server.manager.admission.active == 0


async def test_a_queued_caller_is_read_and_can_leave(tmp_path: Path) -> None:
    """While queued, a frame is answered (not left in a buffer), and session.close frees the queue place at once."""
    async with OmniServer(server_settings(tmp_path, max_sessions=1), build_tiny_engine()) as server:
        first = await RawClient.connect(server)
        await first.start()
        queued = await RawClient.connect(server)
        await queued.until("session.queued")
        await queued.append(np.zeros(1600, np.float32))
        assert (await queued.until("error"))["error"]["code"] == "not_initialized"
        assert server.manager.admission.queued == 1
        await queued.send("session.close")
        assert (await queued.until("session.closed"))["reason"] == "stopped"
        assert not queued.of_type("session.queue_done")
        assert server.manager.admission.queued == 0
        await first.close()
        await queued.close()


async def test_a_webrtc_caller_is_read_while_it_connects(tmp_path: Path) -> None:
    """Before its data channel opens, the signalling socket is read: input is refused, session.close ends it."""
    settings = server_settings(tmp_path, webrtc_connect_timeout_s=120)
    async with OmniServer(settings, build_tiny_engine()) as server:
        client = await WebRtcClient.connect(server)
        await client.signal_until("session.queue_done")
        client.pc.addTrack(client.mic)
        await client.pc.setLocalDescription(await client.pc.createOffer())
        await client.signal("session.init", payload={})
        await client.signal("webrtc.offer", sdp=client.pc.localDescription.sdp)
        await client.signal_until("webrtc.answer")  # and never applied: the connection does not come up
        await client.signal("input.append", input={"audio": b64_audio(np.zeros(160, np.float32))})
        error = await client.signal_until("error")
        assert error["error"]["code"] == "not_initialized" and "starting" in error["error"]["message"]
        await client.signal("session.close")
        assert (await client.signal_until("session.closed"))["reason"] == "stopped"
        assert server.manager.admission.active == 0 and not server.manager.sessions
        await client.close()


async def test_a_failing_reader_ends_its_call_at_once(server: OmniServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fault while handling a frame ends that call now with internal_error, and frees its slot and conversation."""

    def broken(before: int, now: int) -> None:
        raise RuntimeError("a bug in the metrics")

    monkeypatch.setattr(server.metrics, "client_underruns", broken)
    client = await RawClient.connect(server)
    await client.start()
    await client.send("client.stats", underruns=1, played_s=1.0)
    error = await client.until("error", limit_s=10)
    assert error["error"]["code"] == "internal_error" and "bug" not in error["error"]["message"]
    assert (await client.until("session.closed", limit_s=10))["reason"] == "error"
    assert not server.manager.sessions and server.manager.admission.active == 0
    other = await RawClient.connect(server)
    await other.start()
    await other.close()
    await client.close()


async def test_client_stats_cannot_break_the_reader_or_the_metrics(server: OmniServer) -> None:
    """Huge or non-finite underruns are refused; the counter takes only a growing running total; the call goes on."""
    client = await RawClient.connect(server)
    await client.start(turn_detection={"type": "none"})
    for raw in (
        '{"type":"client.stats","underruns":1' + "0" * 300 + "}",
        '{"type":"client.stats","underruns":1e400}',
        '{"type":"client.stats","underruns":1' + "0" * 5000 + "}",
    ):
        await client.ws.send(raw)
        assert (await client.until("error"))["error"]["code"] in ("invalid_request", "invalid_json")
    for underruns in (3, 1, 3, 4):  # a report lower than the last is no new underrun
        await client.ws.send(json.dumps({"type": "client.stats", "underruns": underruns, "played_s": 2.0}))
    await client.append(np.zeros(16000, np.float32))
    await client.send("input.commit")
    assert (await client.until("response.done"))["response"]["status"] == "completed"
    assert server.metrics.registry.get_sample_value("omni_client_playback_underruns_total") == 4
    await client.close()


async def test_no_connection_holds_more_than_a_few_unread_messages(server: OmniServer) -> None:
    """Each connection's receive queue stops reading the socket after a few messages (not websockets' 16)."""
    client = await RawClient.connect(server)
    await client.until("session.queue_done")
    assert server._server is not None
    (connection,) = server._server.connections
    assert connection.max_queue_high == MAX_UNREAD_MESSAGES == 4
    await client.close()


async def test_a_call_closes_promptly_while_the_client_keeps_sending(server: OmniServer) -> None:
    """Frames sent after session.close are read and dropped while the socket closes, so the closing handshake
    completes at once (a paused reader missed the client's close frame: 10 s)."""
    client = await RawClient.connect(server)
    await client.until("session.queue_done")
    await client.send("session.close")
    for _ in range(30):
        await client.send("input.append", input={"audio": b64_audio(np.zeros(160, np.float32))})
    assert (await client.until("session.closed"))["reason"] == "stopped"
    async with asyncio.timeout(timeout(3)):  # websockets' close_timeout is 10 s
        await client.ws.wait_closed()
