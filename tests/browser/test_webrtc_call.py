"""The page's default media path, WebRTC, in a real Chromium against a real server (aiortc) on loopback."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import aioice.ice
import pytest
from PIL import Image

from omni_server.app import OmniServer
from tests.browser.conftest import LaunchBrowser
from tests.browser.test_call import DESKTOP, check_heard, open_page, subsequence, wait_js
from tests.conftest import timeout

pytestmark = pytest.mark.browser
FALLBACK_BOUND_S = 9.0  # click → WebSocket call: media, signalling, gathering, then at most 4 s of silent ICE


async def test_webrtc_video_call_speaks_barges_in_shares_and_hangs_up(
    server: OmniServer, launch_browser: LaunchBrowser, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A WebRTC video call: listening → thinking → speaking with subtitles, the reply track is really played and
    moves the orb, the camera reaches the model, the user's next utterance silences the reply at once and its
    subtitle keeps only what was heard, a shared screen replaces the camera on its track, hang-up frees the call."""
    frame_widths: list[int] = []
    wide_frame = asyncio.Event()
    prefill = server.worker.prefill

    async def spy(conv: Any, msgs: list[dict[str, Any]], **kwargs: Any) -> int:
        """The width of each image the model gets."""
        frame_widths.extend(item.width for item in msgs[0]["content"] if isinstance(item, Image.Image))
        if frame_widths and frame_widths[-1] > 640:
            wide_frame.set()
        return await prefill(conv, msgs, **kwargs)

    monkeypatch.setattr(server.worker, "prefill", spy)
    reply = server.worker.reply

    async def long_reply(conv: Any, **kwargs: Any) -> Any:
        """Replies that run to max_new_tokens: the tiny engine's speech, like the real model's, often ends after a
        step or two, and the second utterance must find reply audio still queued on the server's track."""
        return await reply(conv, **{**kwargs, "min_new_tokens": 3})

    monkeypatch.setattr(server.worker, "reply", long_reply)
    model = server.worker.engine.model
    decode = model._decode

    def no_empty_chunks(ids: list[int], tokenizer: Any) -> str:
        """A chunk the random weights leave empty fails its reply, as the real decoder's IndexError does
        (test_model_quirks covers that): this call needs every reply to go on, with audio to talk over."""
        try:
            return str(decode(ids, tokenizer))
        except IndexError:
            return ""

    monkeypatch.setattr(model, "_decode", no_empty_chunks)
    async with launch_browser() as browser:
        context, page, js_errors = await open_page(browser, server, viewport=DESKTOP, transport="webrtc")
        await page.click("#video-call")
        await wait_js(page, "window.omni && window.omni.states.includes('speaking')")
        await wait_js(page, "window.omni.subtitleChars > 0 && window.omni.rtc.heardMs > 0")
        await wait_js(page, "window.omni.rtc.totalAudioEnergy > 0 && window.omni.orb.outPeak > 0.1")
        trace = await page.evaluate("window.omni")
        assert trace["transport"] == "webrtc" and "fallback" not in trace, trace.get("fallback")
        assert subsequence(["connecting", "listening", "thinking", "speaking"], trace["states"]), trace["states"]
        assert trace["events"].get("response.output_audio.delta") is None, "reply audio travels on the track"
        assert trace["rtc"]["bytesReceived"] > 0 and trace["rtc"]["totalSamplesReceived"] > 0
        assert trace["orb"]["micPeak"] > 0.3
        (session,) = server.manager.sessions.values()
        assert session.audio_sink is not None

        # The second utterance starts while the reply still plays: the server drops what was queued on the
        # track, and nothing of the old reply is heard after the flush (the analyser taps the track itself).
        await wait_js(page, "window.omni.flushes >= 1 && window.omni.events['input.speech_started'] >= 2")
        buffer = session.audio_sink.buffer  # type: ignore[attr-defined]
        assert buffer.flushes >= 1 and buffer.dropped_samples > 0
        await wait_js(page, "window.omni.events['response.created'] >= 2", 25)
        # Only what was already in flight (network, jitter buffer) is heard after the flush, not the rest of
        # the reply the server dropped; and the page muted the reply at once anyway.
        rtc = await page.evaluate("window.omni.rtc")
        assert rtc["audibleAfterFlushMs"] < buffer.dropped_samples * 1000 / buffer.rate_hz
        assert rtc["mutedOnFlush"] >= 1
        replies = await page.evaluate("window.omni.replies")
        check_heard(next(r for r in replies if r["interrupted"] and not r["withdrawn"]))
        await wait_js(page, "window.omni.visionTokens > 0", 25)
        assert frame_widths and max(frame_widths) <= 640  # the camera, sent at half its resolution

        await page.click("#share")
        await wait_js(page, "window.omni.sharing === true")
        async with asyncio.timeout(timeout(30)):  # the screen replaced the camera on the same track
            await wide_frame.wait()
        await page.click("#share")
        await wait_js(page, "window.omni.sharing === false")

        await page.click("#hangup")
        await wait_js(page, "window.omni.closedReason === 'stopped' && window.omni.states.at(-1) === 'ended'")
        assert not server.manager.sessions
        assert js_errors == []
        assert (await page.evaluate("window.omni.errors")) == []
        await context.close()


async def test_webrtc_failures_fall_back_to_the_websocket(
    server: OmniServer, launch_browser: LaunchBrowser, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With UDP blocked (the server ignores every ICE packet), the page gives up within its bound, says why, makes
    the call over the WebSocket and sends the tab's next call there at once; a server that reports
    `webrtc_failed` is also fallen back from."""
    monkeypatch.setattr(aioice.ice.StunProtocol, "datagram_received", lambda self, data, addr: None)
    async with launch_browser() as browser:
        context, page, js_errors = await open_page(browser, server, transport="webrtc")
        await page.click("#voice-call")
        await wait_js(page, "window.omni && window.omni.transport === 'websocket' && window.omni.sentAppends > 0")
        trace = await page.evaluate("window.omni")
        assert "no ICE candidate pair answered" in trace["fallback"], trace["fallback"]
        fell_back_ms = next(ms for ms, what in trace["timeline"] if what == "fallback")
        assert fell_back_ms < timeout(FALLBACK_BOUND_S) * 1000, trace["timeline"]
        assert any(what == "slow-connect" for _, what in trace["timeline"])  # "still connecting…" was said
        assert "WebRTC could not connect (no network path" in (await page.text_content("#call-note") or "")
        await page.click("#hangup")
        await wait_js(page, "window.omni.closedReason === 'stopped'")

        await page.click("#voice-call")  # the same tab: straight to the WebSocket, and it says why
        await wait_js(page, "window.omni.closedReason === null && window.omni.sentAppends > 0")
        trace = await page.evaluate("window.omni")
        assert trace["transport"] == "websocket" and "no ICE candidate pair" in trace["fallbackRemembered"]
        assert "rtc" not in trace
        assert "earlier in this tab" in (await page.text_content("#call-note") or "")
        await page.click("#hangup")
        await wait_js(page, "window.omni.closedReason === 'stopped'")
        assert js_errors == []

        monkeypatch.undo()
        settings = dataclasses.replace(server.settings, webrtc_connect_timeout_s=0.0)
        monkeypatch.setattr(server.webrtc, "settings", settings)
        other = await context.new_page()  # a new tab remembers nothing: it tries WebRTC again
        await other.goto(server.url("127.0.0.1"))
        await other.click("#voice-call")
        await wait_js(other, "window.omni && window.omni.transport === 'websocket' && window.omni.sentAppends > 0")
        assert "could not connect" in (await other.evaluate("window.omni.fallback"))
        await other.click("#hangup")
        await wait_js(other, "window.omni.closedReason === 'stopped'")
        assert not server.manager.sessions
        await context.close()
