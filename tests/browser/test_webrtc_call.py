"""The page's default media path, WebRTC, in a real Chromium against a real server (aiortc) on loopback."""

from __future__ import annotations

import pytest

from omni_server.app import OmniServer
from tests.browser.conftest import LaunchBrowser
from tests.browser.test_call import open_page, subsequence, wait_js

pytestmark = pytest.mark.browser


async def test_webrtc_video_call_speaks_barges_in_and_hangs_up(
    server: OmniServer, launch_browser: LaunchBrowser
) -> None:
    """A WebRTC video call: listening → thinking → speaking with subtitles, the reply track is really played,
    the camera reaches the model, the user's next utterance silences the reply at once, hang-up frees the call."""
    async with launch_browser() as browser:
        context, page, js_errors = await open_page(browser, server, transport="webrtc")
        await page.click("#video-call")
        await wait_js(page, "window.omni && window.omni.states.includes('speaking')")
        await wait_js(page, "window.omni.subtitleChars > 0 && window.omni.rtc.heardMs > 0")
        await wait_js(page, "window.omni.rtc.totalAudioEnergy > 0")  # the browser's own count of played audio
        trace = await page.evaluate("window.omni")
        assert trace["transport"] == "webrtc" and "fallback" not in trace, trace.get("fallback")
        assert subsequence(["connecting", "listening", "thinking", "speaking"], trace["states"]), trace["states"]
        assert trace["events"].get("response.output_audio.delta") is None, "reply audio travels on the track"
        assert trace["rtc"]["bytesReceived"] > 0 and trace["rtc"]["totalSamplesReceived"] > 0
        assert any(await page.locator(".subtitles .assistant").all_text_contents())
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
        await wait_js(page, "window.omni.visionTokens > 0", 25)

        await page.click("#hangup")
        await wait_js(page, "window.omni.closedReason === 'stopped' && window.omni.states.at(-1) === 'ended'")
        assert not server.manager.sessions
        assert js_errors == []
        assert (await page.evaluate("window.omni.errors")) == []
        await context.close()


async def test_webrtc_failure_falls_back_to_the_websocket(
    server: OmniServer, launch_browser: LaunchBrowser, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the server cannot connect WebRTC the page says so and makes the same call over the WebSocket."""
    monkeypatch.setattr(server.webrtc, "settings", _with(server, webrtc_connect_timeout_s=0.0))
    async with launch_browser() as browser:
        context, page, js_errors = await open_page(browser, server, transport="webrtc")
        await page.click("#voice-call")
        await wait_js(page, "window.omni && window.omni.transport === 'websocket' && window.omni.sentAppends > 0")
        assert "could not connect" in (await page.evaluate("window.omni.fallback"))
        await page.click("#hangup")
        await wait_js(page, "window.omni.closedReason === 'stopped'")
        assert not server.manager.sessions
        assert js_errors == []
        await context.close()


def _with(server: OmniServer, **changes: object) -> object:
    import dataclasses

    return dataclasses.replace(server.settings, **changes)  # type: ignore[arg-type]
