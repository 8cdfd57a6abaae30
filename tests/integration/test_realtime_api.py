"""The realtime WebSocket API end to end on loopback: handshake, turns, barge-in, bad input, limits."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from omni_server.app import OmniServer
from omni_server.engine.cost import EngineCost
from omni_server.engine.tiny import build_tiny_engine
from tests.conftest import server_settings, timeout
from tests.integration.realtime_client import RawClient, b64_audio


async def test_token_is_required(server: OmniServer) -> None:
    """A connection without the token, or with a wrong one, is refused with 401."""
    for token in (None, "wrong"):
        with pytest.raises(InvalidStatus) as info:
            await RawClient.connect(server, token=token)
        assert info.value.response.status_code == 401


async def test_no_compression_unless_asked(tmp_path: Path) -> None:
    """permessage-deflate is declined by default (it cost the loop more than the audio it shrank) and accepted with ws_compression."""
    for enabled in (False, True):
        async with OmniServer(server_settings(tmp_path, ws_compression=enabled), build_tiny_engine()) as server:
            client = await RawClient.connect(server)  # websockets offers permessage-deflate
            assert client.ws.response is not None
            extensions = client.ws.response.headers.get("Sec-WebSocket-Extensions", "")
            assert ("permessage-deflate" in extensions) is enabled
            await client.close()


async def test_session_created_says_engine_is_noise(server: OmniServer) -> None:
    """The handshake ends in session.created, which warns that the tiny engine's replies are noise."""
    client = await RawClient.connect(server)
    created = await client.start()
    assert created["session_id"].startswith("rt_")
    assert created["engine"]["replies_are_noise"] is True
    assert "noise" in created["engine"]["notice"]
    await client.close()


async def test_spoken_turn_streams_reply(server: OmniServer, question: npt.NDArray[np.float32]) -> None:
    """Speech then silence: speech_started, speech_stopped, response deltas, then response.done with usage."""
    client = await RawClient.connect(server)
    await client.start()
    await client.speak(question)
    done = await client.until("response.done")
    types = [e["type"] for e in client.events]
    assert types.index("input.speech_started") < types.index("input.speech_stopped") < types.index("response.created")
    audio = client.of_type("response.output_audio.delta")
    assert audio and all(a["sample_rate"] == 24000 for a in audio)
    assert done["response"]["status"] == "completed"
    usage = done["response"]["usage"]
    assert usage["input_tokens_details"]["audio_tokens"] > 27  # more than one second of speech reached the model
    assert done["timings"]["end_of_turn_to_first_audio_ms"] is not None
    await client.close()


async def test_bad_frames_get_errors_and_the_call_goes_on(
    server: OmniServer, question: npt.NDArray[np.float32]
) -> None:
    """Malformed JSON, unknown types, bad base64, oversized audio: each an error event, then a normal turn."""
    client = await RawClient.connect(server)
    await client.send("input.append", input={"audio": b64_audio(np.zeros(160, np.float32))})
    assert (await client.until("error"))["error"]["code"] == "not_initialized"
    await client.start()
    cases = [
        ("{not json", "invalid_json"),
        (json.dumps({"type": "nope"}), "unknown_event"),
        (json.dumps([1, 2]), "invalid_json"),
        (json.dumps({"type": "input.append", "input": {"audio": "@@@"}}), "invalid_audio"),
        (json.dumps({"type": "input.append", "input": {"audio": "AAA="}}), "invalid_audio"),
        (
            json.dumps({"type": "input.append", "input": {"audio": b64_audio(np.zeros(16000 * 6, np.float32))}}),
            "invalid_audio",
        ),
        (
            json.dumps({"type": "input.append", "input": {"audio": b64_audio(np.full(10, np.nan, np.float32))}}),
            "invalid_audio",
        ),
        (json.dumps({"type": "input.append", "input": {"audio": 5}}), "invalid_request"),
        (json.dumps({"type": "session.init", "payload": {}}), "already_initialized"),
    ]
    for raw, code in cases:
        await client.ws.send(raw)
        assert (await client.until("error"))["error"]["code"] == code, raw
    await client.speak(question)
    assert (await client.until("response.done"))["response"]["status"] == "completed"
    await client.close()


async def _turn_bounds(server: OmniServer, speech: npt.NDArray[np.float32], binary: int) -> tuple[int, int]:
    client = await RawClient.connect(server)
    await client.start()
    await client.speak(speech, binary=binary)
    done = await client.until("response.done")
    assert done["response"]["status"] == "completed"
    assert done["response"]["usage"]["input_tokens_details"]["audio_tokens"] > 27
    await client.close()
    started, stopped = client.of_type("input.speech_started"), client.of_type("input.speech_stopped")
    return started[0]["audio_start_ms"], stopped[0]["audio_end_ms"]


async def test_binary_audio_frames_make_the_same_turn(server: OmniServer, question: npt.NDArray[np.float32]) -> None:
    """Ours: speech in binary float32 messages gives exactly the turn of input.append; int16 messages give a turn too."""
    as_json = await _turn_bounds(server, question, binary=0)
    assert await _turn_bounds(server, question, binary=1) == as_json
    start_ms, end_ms = await _turn_bounds(server, question, binary=2)
    assert abs(start_ms - as_json[0]) <= 64 and abs(end_ms - as_json[1]) <= 64  # int16 rounding may move a window


async def test_bad_binary_frames_get_errors_and_the_call_goes_on(
    server: OmniServer, question: npt.NDArray[np.float32]
) -> None:
    """An unknown binary kind, a ragged length or NaN samples: each an invalid_audio error, then a normal turn."""
    client = await RawClient.connect(server)
    await client.start()
    for raw in (
        bytes([7, 0, 0, 0]),
        bytes([1, 0, 0, 0, 0, 0]),
        bytes([1, 0, 0, 0]) + np.full(4, np.nan, "<f4").tobytes(),
    ):
        await client.ws.send(raw)
        assert (await client.until("error"))["error"]["code"] == "invalid_audio", raw
    await client.speak(question, binary=1)
    assert (await client.until("response.done"))["response"]["status"] == "completed"
    await client.close()


async def test_undecodable_jpeg_in_video_call(server: OmniServer) -> None:
    """A corrupt camera frame gets invalid_image; the call stays up."""
    client = await RawClient.connect(server, mode="video")
    await client.start()
    await client.append(np.zeros(1600, np.float32), video_frames=["bm90IGEganBlZw=="])
    assert (await client.until("error"))["error"]["code"] == "invalid_image"
    await client.append(np.zeros(1600, np.float32))
    await client.send("session.close")
    assert (await client.until("session.closed"))["reason"] == "stopped"


async def test_huge_message_closes_cleanly(tmp_path: Path) -> None:
    """A message over the size limit closes the connection with 1009, and the server keeps serving."""
    settings = server_settings(tmp_path, max_message_bytes=64 * 1024)
    async with OmniServer(settings, build_tiny_engine()) as server:
        client = await RawClient.connect(server)
        await client.start()
        await client.ws.send(json.dumps({"type": "input.append", "input": {"audio": "A" * 100_000}}))
        with pytest.raises(ConnectionClosed) as info:
            for _ in range(10):
                await client.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009
        other = await RawClient.connect(server)
        await other.start()
        await other.close()


async def test_force_listen_interrupts_reply(tmp_path: Path, question: npt.NDArray[np.float32]) -> None:
    """force_listen during a reply: response.listen, then response.done interrupted, then no more audio."""
    # A reply that takes as long to make as it lasts: the tiny engine's, at no cost, was often all made while
    # speculated and over at the server by its first delta, and then there is nothing to stop.
    engine = build_tiny_engine(cost=EngineCost(audio_rtf=1.0))
    async with OmniServer(server_settings(tmp_path), engine) as server:
        client = await RawClient.connect(server)
        await client.start(config={"max_tokens": 200})
        await client.speak(question)
        await client.until("response.output_audio.delta")
        await client.append(np.zeros(1600, np.float32), force_listen=True)
        await client.until("response.listen")
        done = await client.until("response.done")
        assert done["response"]["status"] == "interrupted"
        await client.append(np.zeros(1600, np.float32))
        await client.send("session.close")
        await client.until("session.closed")
    after = client.events[client.events.index(done) :]
    assert not [e for e in after if e["type"] == "response.output_audio.delta"]


async def test_speech_barges_in(tmp_path: Path, question: npt.NDArray[np.float32]) -> None:
    """The user speaking over a reply (speech made in real time) stops it and opens a new turn."""
    engine = build_tiny_engine(cost=EngineCost(audio_rtf=1.0))  # a reply takes as long as it lasts
    # Talking at once over a reply that has just begun would continue the turn (resume_window_ms): off here.
    async with OmniServer(server_settings(tmp_path, resume_window_ms=0), engine) as server:
        client = await RawClient.connect(server)
        await client.start()
        await client.speak(question)
        await client.until("response.output_audio.delta")
        await client.speak(question, tail_s=0.0)
        await client.until("response.listen")
        first = await client.until("response.done")
        assert first["response"]["status"] == "interrupted"
        await client.speak(np.zeros(0, np.float32), tail_s=1.0)
        second = await client.until("response.done")
        assert second["response"]["id"] != first["response"]["id"]
        await client.close()


async def test_client_vanishing_mid_reply_frees_the_call(server: OmniServer, question: npt.NDArray[np.float32]) -> None:
    """A client that disconnects mid-reply frees its slot; a call beside it finishes its turn."""
    steady = await RawClient.connect(server)
    await steady.start()
    leaver = await RawClient.connect(server)
    await leaver.start(config={"max_tokens": 200})
    await leaver.speak(question)
    await leaver.until("response.output_audio.delta")
    leaver.ws.transport.abort()  # vanish without a close frame
    await steady.speak(question)
    assert (await steady.until("response.done"))["response"]["status"] == "completed"
    for _ in range(int(timeout(10) / 0.05)):
        if len(server.manager.sessions) == 1:
            break
        await asyncio.sleep(0.05)
    assert server.manager.admission.active == 1
    await steady.close()


async def test_idle_and_duration_limits(tmp_path: Path) -> None:
    """Server-enforced limits end calls with explicit reasons."""
    async with OmniServer(server_settings(tmp_path, idle_timeout_s=0.5), build_tiny_engine()) as server:
        client = await RawClient.connect(server)
        await client.start()
        assert (await client.until("session.closed"))["reason"] == "idle_timeout"
    async with OmniServer(server_settings(tmp_path, max_call_s=0.5), build_tiny_engine()) as server:
        client = await RawClient.connect(server)
        await client.start()
        assert (await client.until("session.closed"))["reason"] == "max_duration"


async def test_long_call_rolls_context_over(tmp_path: Path, question: npt.NDArray[np.float32]) -> None:
    """Past the context budget the call goes on: the model conversation restarts from the system prompt."""
    settings = server_settings(tmp_path, max_context_tokens=1024, max_new_tokens=48)
    async with OmniServer(settings, build_tiny_engine()) as server:
        client = await RawClient.connect(server)
        await client.start()
        for _ in range(12):  # ~150 tokens a turn: the budget is full after about seven
            await client.speak(question)
            await client.until("response.done")
            if client.of_type("conversation.truncated"):
                break
        truncated = client.of_type("conversation.truncated")
        assert truncated and truncated[0]["reason"] == "context_full"
        await client.speak(question)
        assert (await client.until("response.done"))["response"]["status"] == "completed"
        await client.close()
