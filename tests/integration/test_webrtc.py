"""The WebRTC path end to end on loopback: an aiortc peer speaks on a track, hears the reply on a track,
gets the events on a data channel, barges in, and hangs up; bad signalling gets clear errors."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

from omni_server.app import OmniServer
from omni_server.engine.cost import EngineCost
from omni_server.engine.tiny import build_tiny_engine
from tests.conftest import server_settings, timeout
from tests.integration.webrtc_client import WebRtcClient


async def test_video_call_speaks_hears_barges_in_and_hangs_up(
    tmp_path: Path, question: npt.NDArray[np.float32]
) -> None:
    """Speech on the mic track → turn events and text on the channel, reply audio on the track (not as
    base64), camera frames reach the model; force_listen flushes the track; hang-up frees the session."""
    engine = build_tiny_engine(cost=EngineCost(audio_rtf=1.0))  # a reply takes as long as it lasts
    # The question's turn ends by silence: Smart Turn may find "Hello there." finished, and the reply to
    # it is withdrawn when the question goes on (user_continued), which is not what this test is about.
    async with OmniServer(server_settings(tmp_path, turn_model=False), engine) as server:
        await _video_call(server, question)


async def _video_call(server: OmniServer, question: npt.NDArray[np.float32]) -> None:
    client = await WebRtcClient.connect(server, mode="video")
    created = await client.start(video=True)
    assert created["transport"] == "webrtc" and created["mode"] == "video"
    assert client.signals[0] == {"type": "webrtc.config", "ice_servers": []}
    candidates = [line for line in client.pc.remoteDescription.sdp.splitlines() if line.startswith("a=candidate:")]
    assert candidates and all(line.split()[4] == "127.0.0.1" for line in candidates), candidates
    session = server.manager.sessions[created["session_id"]]

    client.say(question)
    await client.until("input.speech_started")
    await client.until("input.speech_stopped")
    created_at = await client.until("response.created")
    async with _bounded(10):
        while client.heard.loud_since(0) < 5:  # 100 ms of reply audio heard
            await _tick()
    assert client.of_type("response.output_text.delta")
    assert not client.of_type("response.output_audio.delta"), "reply audio travels on the track only"

    # Barge-in while the reply plays: the server's track is flushed, and the track goes quiet.
    client.send("input.append", input={"force_listen": True})
    listen = await client.until("response.listen")
    assert listen["response_id"] == created_at["response_id"]
    done = await client.until("response.done")
    assert done["response"]["status"] == "interrupted"
    buffer = session.audio_sink.buffer  # type: ignore[union-attr]
    assert buffer.flushes == 1 and buffer.dropped_samples > 0 and buffer.queued_s == 0
    quiet_from = time.monotonic() + 0.2  # frames already encoded and in flight
    async with _bounded(5):
        while not [f for f in client.heard.frames if f[0] > quiet_from + 0.3]:
            await _tick()
    assert client.heard.loud_since(quiet_from) == 0
    assert done["response"]["usage"]["input_tokens_details"]["vision_tokens"] > 0, "camera frames reached the model"

    # Audio as base64 (or as a binary audio message) on the channel is refused on a WebRTC call; the call goes on.
    client.send("input.append", input={"audio": "AAAA"})
    error = await client.until("error")
    assert "media tracks" in error["error"]["message"]
    client.channel.send(bytes([1, 0, 0, 0]) + bytes(4))
    error = await client.until("error")
    assert "media tracks" in error["error"]["message"]

    client.send("session.close", reason="user_stop")
    closed = await client.signal_until("session.closed")
    assert closed["reason"] == "stopped"
    assert not server.manager.sessions
    assert server.manager.admission.active == 0
    await client.close()


async def test_malformed_signalling_gets_clear_errors(server: OmniServer) -> None:
    """A webrtc.offer without SDP is an error and the wait goes on; SDP without tracks ends the attempt."""
    client = await WebRtcClient.connect(server)
    await client.signal_until("session.queue_done")
    await client.signal("webrtc.offer")
    error = await client.signal_until("error")
    assert error["error"]["code"] == "invalid_sdp"
    await client.signal("session.init", payload={})
    await client.signal("webrtc.offer", sdp="v=0\r\nthis is not an offer\r\n")
    error = await client.signal_until("error")
    assert error["error"]["code"] == "invalid_sdp"
    assert "microphone track and a data channel" in error["error"]["message"]
    closed = await client.signal_until("session.closed")
    assert closed["reason"] == "error"
    assert not server.manager.sessions and server.manager.admission.active == 0
    await client.close()


async def test_full_server_refuses_webrtc_callers_too(tmp_path: Path) -> None:
    """Admission is the same as on the WebSocket API: a caller beyond slots and queue is told queue_full."""
    settings = server_settings(tmp_path, max_sessions=1, max_queue=0)
    async with OmniServer(settings, build_tiny_engine(seed=0)) as server:
        first = await WebRtcClient.connect(server)
        await first.start()
        second = await WebRtcClient.connect(server)
        error = await second.signal_until("error")
        assert error["error"]["code"] == "queue_full"
        assert (await second.signal_until("session.closed"))["reason"] == "queue_full"
        await second.close()
        first.send("session.close")
        assert (await first.signal_until("session.closed"))["reason"] == "stopped"
        await first.close()


def _bounded(seconds: float) -> asyncio.Timeout:
    return asyncio.timeout(timeout(seconds))


async def _tick() -> None:
    await asyncio.sleep(0.02)  # polls what the recording task has heard; bounded by `_bounded`
