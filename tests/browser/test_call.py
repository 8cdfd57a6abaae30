"""The web client in a real Chromium against a real server: voice call, barge-in, video frames, errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from playwright.async_api import Browser, BrowserContext, Page
from playwright.async_api import TimeoutError as PlaywrightTimeout

from omni_server.app import OmniServer
from omni_server.engine.tiny import build_tiny_engine
from tests.browser.conftest import LaunchBrowser
from tests.conftest import server_settings, timeout

pytestmark = pytest.mark.browser

# `OMNI_SCREENSHOT=docs/call.png make test ARGS=tests/browser` refreshes the README's picture; tests never write
# into the checkout by default.
SCREENSHOT = os.environ.get("OMNI_SCREENSHOT")


async def open_page(
    browser: Browser, server: OmniServer, *, width: int = 420, transport: str = "websocket"
) -> tuple[BrowserContext, Page, list[str]]:
    """The page at a phone-like width, logged in with the token, set to a media path (WebRTC is the
    page's default; these tests are about the WebSocket path); the list collects uncaught page errors."""
    context = await browser.new_context(ignore_https_errors=True, viewport={"width": width, "height": 820})
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(server.url("127.0.0.1"))
    assert page.url.endswith(f":{server.port}/"), "the token login redirects to the clean URL"
    page.set_default_timeout(timeout(20) * 1000)
    await page.select_option("#transport", transport, force=True)  # inside the closed Settings box
    return context, page, errors


async def wait_js(page: Page, expression: str, seconds: float = 20) -> None:
    """Wait (bounded) for a condition in the page; on timeout, say what the call went through."""
    try:
        await page.wait_for_function(expression, timeout=timeout(seconds) * 1000)
    except PlaywrightTimeout:
        trace = await page.evaluate("window.omni")
        pytest.fail(f"timed out waiting for {expression}; the call's trace: {trace}")


def subsequence(wanted: list[str], seen: list[str]) -> bool:
    it = iter(seen)
    return all(any(s == w for s in it) for w in wanted)


async def test_voice_call_speaks_barges_in_and_hangs_up(server: OmniServer, launch_browser: LaunchBrowser) -> None:
    """A voice call goes listening → thinking → speaking with subtitles and audible audio; speech interrupts; hang-up frees the call."""
    async with launch_browser() as browser:
        context, page, js_errors = await open_page(browser, server)
        await page.click("#voice-call")
        await wait_js(page, "window.omni && window.omni.states.includes('speaking')")
        await wait_js(
            page, "window.omni.subtitleChars > 0 && window.omni.playedSamples > 2400 && window.omni.playedEnergy > 0"
        )
        trace = await page.evaluate("window.omni")
        assert subsequence(["connecting", "listening", "thinking", "speaking"], trace["states"]), trace["states"]
        assert await page.text_content("#state") in ("Speaking", "Listening", "Thinking…")
        assert "noise" in (await page.text_content("#notice") or "")
        assert len((await page.text_content(".subtitles .assistant")) or "") > 0
        assert "You spoke" in (await page.text_content(".subtitles .user") or "")
        if SCREENSHOT:
            await page.screenshot(path=SCREENSHOT)

        # The second utterance in the mic file starts while the reply plays: playback is flushed at once.
        await wait_js(page, "window.omni.droppedSamples > 0 && window.omni.events['input.speech_started'] >= 2")
        trace = await page.evaluate("window.omni")
        assert trace["flushes"] >= 1
        assert await page.locator(".subtitles .interrupted").count() >= 1
        assert trace["clientLatencyMs"] is not None and trace["clientLatencyMs"] > 0
        assert (await page.text_content("#lat-server") or "").endswith("ms")

        assert server.manager.sessions
        await page.click("#hangup")
        await wait_js(page, "window.omni.closedReason === 'stopped' && window.omni.states.at(-1) === 'ended'")
        # The server forgets the call before it sends `session.closed`, which the page has now seen.
        assert not server.manager.sessions
        assert await page.is_visible("#voice-call")
        assert js_errors == []
        assert (await page.evaluate("window.omni.errors")) == []
        await context.close()


async def test_video_call_sends_camera_frames(server: OmniServer, launch_browser: LaunchBrowser) -> None:
    """A video call sends JPEG frames with the audio and the model sees them (vision tokens in usage)."""
    async with launch_browser() as browser:
        context, page, js_errors = await open_page(browser, server)
        await page.click("#video-call")
        await wait_js(page, "window.omni && window.omni.sentFrames > 0")
        assert await page.is_visible("#preview")
        await wait_js(page, "window.omni.visionTokens > 0", 25)
        await page.click("#hangup")
        await wait_js(page, "window.omni.closedReason === 'stopped'")
        assert not server.manager.sessions
        assert js_errors == []
        await context.close()


async def test_denied_microphone_shows_a_human_message(server: OmniServer, launch_browser: LaunchBrowser) -> None:
    """Without a permission grant the page explains that the microphone was blocked; no call is made."""
    async with launch_browser(fake_ui=False) as browser:
        context, page, js_errors = await open_page(browser, server, transport="webrtc")
        await page.click("#voice-call")
        await wait_js(page, "!document.getElementById('error').hidden")
        message = await page.text_content("#error") or ""
        assert "microphone was blocked" in message, message
        assert await page.is_visible("#voice-call")
        assert not server.manager.sessions
        assert js_errors == []
        await context.close()


async def test_full_server_says_so(tmp_path: Path, launch_browser: LaunchBrowser) -> None:
    """With every slot taken and no room to wait, a second caller is told the server is full."""
    settings = server_settings(tmp_path, max_sessions=1, max_queue=0)
    async with OmniServer(settings, build_tiny_engine(seed=0)) as server, launch_browser() as browser:
        first, page1, _ = await open_page(browser, server)
        await page1.click("#voice-call")
        await wait_js(page1, "window.omni && window.omni.states.includes('listening')")
        second, page2, js_errors = await open_page(browser, server)
        await page2.click("#voice-call")
        await wait_js(page2, "!document.getElementById('error').hidden")
        assert "server is full" in (await page2.text_content("#error") or "")
        assert await page2.evaluate("window.omni.closedReason") == "queue_full"
        assert js_errors == []
        await page1.click("#hangup")
        await wait_js(page1, "window.omni.closedReason === 'stopped'")
        await first.close()
        await second.close()
