"""Operating the server on loopback: metrics, readiness while loading, and the connection guards."""

from __future__ import annotations

import asyncio
import http.client
import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed, InvalidStatus

from omni_server.app import OmniServer
from omni_server.engine.base import Engine
from omni_server.engine.tiny import build_tiny_engine
from omni_server.errors import EngineError
from tests.conftest import TOKEN, server_settings, timeout
from tests.integration.library_client import LibraryClient
from tests.integration.realtime_client import RawClient, client_ssl

MANUAL = {"turn_detection": {"type": "none"}}


def get(server: OmniServer, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=client_ssl(server), timeout=timeout(10))
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


async def scrape(server: OmniServer) -> dict[str, float]:
    """Every sample of /metrics as `name{labels}` -> value."""
    status, body = await asyncio.to_thread(get, server, "/metrics", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200
    samples = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return samples


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait for a server-side counter to change (counters have no event to await)."""
    async with asyncio.timeout(timeout(10)):
        while not condition():  # noqa: ASYNC110  (see the docstring)
            await asyncio.sleep(0.01)


async def manual_turn(client: RawClient) -> dict[str, object]:
    """One second of noise, committed: the tiny engine replies."""
    await client.append(np.random.default_rng(0).uniform(-0.3, 0.3, 16000).astype(np.float32))
    await client.send("input.commit")
    return await client.until("response.done")


async def test_metrics_follow_a_call(server: OmniServer) -> None:
    """After one turn /metrics shows the turn, its latency, engine timings, bytes, underruns and the close."""
    client = await RawClient.connect(server)
    await client.start(**MANUAL)
    live = await scrape(server)
    assert live["omni_calls_active"] == 1 and live["omni_ready"] == 1
    await manual_turn(client)
    await client.send("client.stats", underruns=3, played_s=1.0)
    await client.send("input.append", input={"audio": "%%%"})  # an error the server counts by code
    await client.until("error")
    await client.send("session.close")
    await client.until("session.closed")
    m = await scrape(server)
    assert m['omni_turns_total{status="completed"}'] == 1
    assert m["omni_end_of_speech_to_first_audio_seconds_count"] == 1
    assert m["omni_engine_prefill_seconds_count"] >= 2  # the system prompt and the unit
    assert m["omni_engine_chunk_seconds_count"] >= 1
    assert m["omni_audio_real_time_factor_count"] == 1
    assert m["omni_client_playback_underruns_total"] == 3
    assert m['omni_errors_total{code="invalid_audio"}'] == 1
    assert m['omni_sessions_closed_total{reason="stopped"}'] == 1
    assert m["omni_received_bytes_total"] > 16000 * 4 and m["omni_sent_bytes_total"] > 1000
    assert m["omni_calls_active"] == 0


async def test_every_route_but_health_needs_the_token(server: OmniServer) -> None:
    """From localhost too: the page, /metrics and the realtime API answer 401 without the token."""
    for path in ("/", "/metrics", "/index.html"):
        status, _ = await asyncio.to_thread(get, server, path)
        assert status == 401, path
    for path in ("/healthz", "/readyz"):
        status, _ = await asyncio.to_thread(get, server, path)
        assert status == 200, path
    with pytest.raises(InvalidStatus) as info:
        await RawClient.connect(server, token=None)
    assert info.value.response.status_code == 401
    assert (await scrape(server))['omni_connections_refused_total{reason="auth"}'] >= 4


async def test_ready_only_after_the_model_loads(tmp_path: Path) -> None:
    """While the loader runs: /healthz ok, /readyz 503 starting, callers held with session.queued(starting)."""
    release = threading.Event()

    def slow_loader() -> Engine:
        release.wait(timeout(30))
        return build_tiny_engine(seed=0)

    async with OmniServer(server_settings(tmp_path), slow_loader) as server:
        assert (await asyncio.to_thread(get, server, "/healthz"))[0] == 200
        assert await asyncio.to_thread(get, server, "/readyz") == (503, "starting: the model is loading\n")
        client = await RawClient.connect(server)
        held = await client.until("session.queued")
        assert held["reason"] == "starting"
        release.set()
        await server.wait_ready()
        created = await client.start()
        assert created["session_id"].startswith("rt_")
        assert await asyncio.to_thread(get, server, "/readyz") == (200, "ready\n")
        await client.close()


async def test_failed_load_is_reported(tmp_path: Path) -> None:
    """A loader that fails: /readyz says why, held callers get engine_error, wait_ready raises."""
    release = threading.Event()

    def failing_loader() -> Engine:
        release.wait(timeout(30))
        raise EngineError("No CUDA GPU is visible.")

    async with OmniServer(server_settings(tmp_path), failing_loader) as server:
        client = await RawClient.connect(server)
        await client.until("session.queued")
        release.set()
        error = await client.until("error")
        assert error["error"]["code"] == "engine_error"
        assert (await client.until("session.closed"))["reason"] == "engine_error"
        with pytest.raises(EngineError, match="No CUDA GPU"):
            await server.wait_ready()
        assert await asyncio.to_thread(get, server, "/readyz") == (503, "failed: No CUDA GPU is visible.\n")


async def test_connections_per_address_are_limited(tmp_path: Path) -> None:
    """Past the per-address limit a connection gets HTTP 429 before the handshake; closing one frees a place."""
    async with OmniServer(server_settings(tmp_path, max_connections_per_ip=2), build_tiny_engine()) as server:
        first, second = await RawClient.connect(server), await RawClient.connect(server)
        with pytest.raises(InvalidStatus) as info:
            await RawClient.connect(server)
        assert info.value.response.status_code == 429
        assert b"Too many connections" in info.value.response.body
        await first.close()
        await eventually(lambda: server.guard.open["127.0.0.1"] == 1)  # the server saw the socket close
        third = await RawClient.connect(server)
        await third.start()
        await asyncio.gather(second.close(), third.close())


async def test_browser_origins_are_checked(tmp_path: Path) -> None:
    """Another site's page gets 403; the server's own origin, allowed origins and SDKs (no Origin) get in."""
    settings = server_settings(tmp_path, allow_origin="https://app.example, https://other.example")
    async with OmniServer(settings, build_tiny_engine()) as server:
        with pytest.raises(InvalidStatus) as info:
            await RawClient.connect(server, origin="https://evil.example")
        assert info.value.response.status_code == 403
        own = f"https://127.0.0.1:{server.port}"
        for origin in (own, "https://app.example", None):
            client = await RawClient.connect(server, origin=origin)
            await client.start()
            await client.close()


async def test_upload_limits_refuse_the_piece_not_the_call(tmp_path: Path) -> None:
    """A camera frame or an audio piece over its limit is refused with a code; the call then takes a turn."""
    async with OmniServer(server_settings(tmp_path, max_frame_bytes=1000), build_tiny_engine()) as server:
        client = await RawClient.connect(server, mode="video")
        await client.start(**MANUAL)
        await client.send("input.append", input={"audio": "", "video_frames": ["A" * 4000]})
        assert (await client.until("error"))["error"]["code"] == "payload_too_large"
        await client.append(np.zeros(16000 * 6, np.float32))  # over max_append_s = 5
        assert (await client.until("error"))["error"]["code"] == "invalid_audio"
        assert (await manual_turn(client))["response"]["status"] == "completed"
        await client.close()


async def test_client_that_stops_reading_is_cut_off(tmp_path: Path) -> None:
    """A caller that never reads is disconnected as slow_client after send_timeout_s; others are unaffected."""
    async with OmniServer(server_settings(tmp_path, send_timeout_s=1.0), build_tiny_engine()) as server:
        # The client's own queue holds one message, then its small socket buffer fills and is not read.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        stalled = await RawClient.connect(server, max_queue=1, sock=sock, server_hostname="127.0.0.1")
        await stalled.start(**MANUAL)
        assert server._server is not None
        for conn in server._server.connections:  # small kernel buffers: the server's own bound is what is tested
            conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(timeout(60)):
                while True:  # every unknown event earns an error event that nobody reads
                    await stalled.ws.send('{"type":"nope"}')
                    await asyncio.sleep(0)  # one loop serves both ends: let the server run
        registry = server.metrics.registry
        await eventually(
            lambda: registry.get_sample_value("omni_sessions_closed_total", {"reason": "slow_client"}) == 1
        )
        client = await RawClient.connect(server)
        await client.start(**MANUAL)
        assert (await manual_turn(client))["response"]["status"] == "completed"
        await client.close()


async def test_logs_name_sessions_but_never_transcripts(server: OmniServer, caplog: pytest.LogCaptureFixture) -> None:
    """At INFO the log has the call's start and end with its session id, and none of the reply's text."""
    caplog.set_level(logging.INFO)
    client = await RawClient.connect(server)
    created = await client.start(**MANUAL, instructions="Say the secret word pineapple.")
    await manual_turn(client)
    await client.send("session.close")
    await client.until("session.closed")
    await client.close()
    said = "".join(e["text"] for e in client.of_type("response.output_text.delta"))
    words = {w for w in said.split() if len(w) >= 4} | {"pineapple"}
    logged = "\n".join(r.getMessage() + " " + str(vars(r)) for r in caplog.records)
    assert [r for r in caplog.records if getattr(r, "session_id", None) == created["session_id"]]
    assert not [w for w in words if w in logged]


async def test_out_of_range_settings_are_brought_into_range(server: OmniServer) -> None:
    """Zero temperature, negative durations, absurd slice counts: the call is made and replies (found by fuzzing)."""
    client = await RawClient.connect(server)
    await client.start(
        turn_detection={"type": "none", "min_speech_ms": -5, "silence_ms": 10**9},
        config={"temperature": 0, "max_tokens": -3},
        max_slice_nums=10**6,
    )
    assert (await manual_turn(client))["response"]["status"] == "completed"
    await client.close()


async def test_shutdown_closes_every_socket_within_the_grace_period(tmp_path: Path) -> None:
    """An idle library socket, a caller that never sent session.init and an idle call: all closed, promptly."""
    settings = server_settings(tmp_path, shutdown_grace_s=1.0)
    server = OmniServer(settings, build_tiny_engine())
    await server.__aenter__()
    library = await LibraryClient.connect(server, None)
    silent = await RawClient.connect(server)
    await silent.until("session.queue_done")
    call = await RawClient.connect(server)
    await call.start()
    started = time.monotonic()
    async with asyncio.timeout(timeout(10)):  # before: never (an open library socket kept the server up)
        await server.shutdown()
    assert time.monotonic() - started < settings.shutdown_grace_s + 3
    assert (await call.until("session.closed"))["reason"] == "server_shutdown"
    with pytest.raises(ConnectionClosed) as info:
        await library.ws.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1001
    with pytest.raises(ConnectionClosed):
        while True:
            await silent.recv()
