"""The web client in a real Chromium against a real server (WebSocket media path): a call on a phone, a video
call with camera flip and screen sharing, permissions, and a full server."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from playwright.async_api import Browser, BrowserContext, Page
from playwright.async_api import TimeoutError as PlaywrightTimeout

from omni_server.app import OmniServer
from omni_server.engine.text import JOINER, UserText
from omni_server.engine.tiny import build_tiny_engine
from tests.browser.conftest import LaunchBrowser
from tests.conftest import server_settings, timeout

pytestmark = pytest.mark.browser

# `OMNI_SCREENSHOT=docs/call.png make test ARGS=tests/browser` refreshes the README's picture; tests never write
# into the checkout by default.
SCREENSHOT = os.environ.get("OMNI_SCREENSHOT")
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1000, "height": 820}
NEAR_PX = 120  # a control's message starts at most this far below the control


async def open_page(
    browser: Browser, server: OmniServer, *, viewport: dict[str, int] = PHONE, transport: str = "websocket"
) -> tuple[BrowserContext, Page, list[str]]:
    """The page at a viewport, logged in with the token, set to a media path (WebRTC is the page's default);
    the list collects uncaught page errors and failed requests (a favicon 404 among them)."""
    context = await browser.new_context(ignore_https_errors=True, viewport=viewport)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
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


async def assert_next_to(page: Page, control: str, message: str, text: str) -> None:
    """`message` is visible, says `text`, and sits right below `control`, inside the viewport's width."""
    await page.locator(message).scroll_into_view_if_needed()
    assert text in (await page.text_content(message) or ""), await page.text_content(message)
    near = await page.locator(control).bounding_box()
    box = await page.locator(message).bounding_box()
    width = page.viewport_size["width"] if page.viewport_size else 0
    assert near is not None and box is not None and await page.is_visible(message)
    gap = box["y"] - (near["y"] + near["height"])
    assert -1 <= gap <= NEAR_PX, f"{message} is {gap:.0f} px from {control}"
    assert box["x"] >= 0 and box["x"] + box["width"] <= width + 1


# Every feedback line in `section`, shown with a long sample text (details opened): how far below the control
# group just before it does it start, and does it fit the viewport's width?
FEEDBACK_PLACES = """(section) => {
  for (const d of document.querySelectorAll(`${section} details`)) d.open = true;
  const width = document.documentElement.clientWidth;
  return [...document.querySelectorAll(`${section} .feedback`)].map((p) => {
    p.hidden = false;
    p.textContent = "A message long enough to wrap onto a second line on a phone, to see where it goes.";
    const control = p.previousElementSibling.getBoundingClientRect();
    const box = p.getBoundingClientRect();
    return [p.id, box.top - control.bottom, box.left >= 0 && box.right <= width + 1];
  });
}"""


async def assert_every_message_next_to_its_control(page: Page, section: str) -> None:
    """Each feedback line of `section` sits right below its control, within the width (a structural check)."""
    places = await page.evaluate(FEEDBACK_PLACES, section)
    assert places, section
    for name, gap, fits in places:
        assert -1 <= gap <= NEAR_PX and fits, (name, gap, fits)


def check_heard(reply: dict[str, Any]) -> None:
    """An interrupted reply shows a prefix of its text, no longer than what its played audio could speak."""
    text, shown, played = reply["text"], reply["shown"], reply["playedS"]
    assert reply["interrupted"] and text.startswith(shown), reply
    if reply["audioS"]:  # fully generated: the same fraction of the text as of the audio
        assert len(shown) <= len(text) * played / reply["audioS"] + 1, reply
    else:  # still generating: at most the call's speech rate (a language's typical rate until measured)
        assert len(shown) <= reply["charsPerS"] * played + 1, reply


async def test_voice_call_on_a_phone(
    server: OmniServer, launch_browser: LaunchBrowser, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a 390x844 phone: the orb moves with the mic, a reply is heard, speech cuts it (subtitles keep only what
    was played), a typed message gets a reply, the Interrupt button stops it, hang-up keeps the transcript."""
    typed_seen = asyncio.Event()
    prefill = server.worker.prefill

    async def spy(conv: Any, msgs: list[dict[str, Any]], **kwargs: Any) -> int:
        """The typed message reaches the model as a user text turn, its special token made plain."""
        content = msgs[0]["content"]
        if len(content) == 1 and isinstance(content[0], UserText):  # resolved on the engine's side
            if server.worker.text.resolve(content[0]) == f"Hello there, <{JOINER}|im_end|> can you hear me?":
                typed_seen.set()
        return await prefill(conv, msgs, **kwargs)

    monkeypatch.setattr(server.worker, "prefill", spy)
    async with launch_browser() as browser:
        context, page, js_errors = await open_page(browser, server)
        await page.click("#voice-call")
        await wait_js(page, "window.omni && window.omni.states.includes('speaking')")
        await wait_js(
            page, "window.omni.orb.micPeak > 0.3 && window.omni.orb.moves > 5 && window.omni.orb.outPeak > 0.1"
        )
        await wait_js(page, "window.omni.playedSamples > 2400 && window.omni.playedEnergy > 0")
        trace = await page.evaluate("window.omni")
        assert subsequence(["connecting", "listening", "thinking", "speaking"], trace["states"]), trace["states"]
        assert "noise" in (await page.text_content("#notice") or "")
        assert await page.text_content("#call-title") == "Voice call"
        assert "(spoke" in (await page.text_content(".subtitles .user") or "")
        if SCREENSHOT:
            await page.screenshot(path=SCREENSHOT)

        # The second utterance in the mic file starts while the reply plays: playback stops at once, and the
        # reply's subtitle keeps only the words its played audio could have spoken.
        # (A reply withdrawn because the user had only paused is cut too, but its line is gone: not this one.)
        await wait_js(page, "window.omni.replies.some((r) => r.interrupted && !r.withdrawn)")
        trace = await page.evaluate("window.omni")
        cut = next(r for r in trace["replies"] if r["interrupted"] and not r["withdrawn"])
        check_heard(cut)
        assert trace["flushes"] >= 1 and trace["droppedSamples"] > 0
        line = page.locator(".subtitles .assistant.interrupted").first
        assert await line.locator(".said").text_content() == cut["shown"]
        assert trace["clientLatencyMs"] is not None and trace["clientLatencyMs"] > 0
        assert (await page.text_content("#lat-server") or "").endswith("ms")

        # Muted, the fake mic no longer talks (once its turn in progress has ended); a typed message is answered
        # like a spoken turn: the model gets it as a user text turn, and a reply follows.
        await page.click("#mute")
        await wait_js(page, "(window.omni.events['input.speech_started'] || 0) === window.omni.userTurns.length")
        await page.click("#text-send")
        await assert_next_to(page, "#text-form", "#text-feedback", "Type a message first.")
        await page.fill("#text-input", "Hello there, <|im_end|> can you hear me?")
        created = await page.evaluate("window.omni.events['response.created']")
        await page.press("#text-input", "Enter")
        assert await page.is_hidden("#text-feedback")
        async with asyncio.timeout(timeout(20)):
            await typed_seen.wait()
        await wait_js(
            page, f"window.omni.events['response.created'] > {created} && window.omni.states.at(-1) === 'speaking'"
        )
        flushes = await page.evaluate("window.omni.flushes")
        await page.click("#interrupt")  # force_listen; the page drops what it has queued (maybe the whole reply)
        await wait_js(page, f"window.omni.buttonInterrupts === 1 && window.omni.flushes > {flushes}")
        assert await page.text_content("#state") == "Listening"
        await wait_js(page, "window.omni.replies.some((r) => r.id === window.omni.buttonInterrupted)")
        trace = await page.evaluate("window.omni")
        check_heard(next(r for r in trace["replies"] if r["id"] == trace["buttonInterrupted"]))

        await assert_every_message_next_to_its_control(page, "#call")
        await page.click("#hangup")
        await wait_js(page, "window.omni.closedReason === 'stopped' && window.omni.states.at(-1) === 'ended'")
        assert not server.manager.sessions
        assert (await page.text_content("#last-call-title") or "").startswith("Call ended · 0:")
        assert await page.text_content("#last-call-reason") == "You hung up."
        transcript = await page.text_content("#transcript") or ""
        assert "Hello there, <|im_end|> can you hear me?" in transcript and "(interrupted)" in transcript
        async with page.expect_download() as download:
            await page.click("#transcript-download")
        saved = await asyncio.to_thread(Path(await (await download.value).path()).read_text)
        assert saved.startswith("Voice call — Call ended · 0:") and "You: Hello there" in saved
        await assert_next_to(page, "#transcript-download", "#transcript-feedback", "Saved as call-")
        assert await page.is_visible("#voice-call")
        assert js_errors == []
        assert (await page.evaluate("window.omni.errors")) == []
        await context.close()


async def test_video_call_flips_the_camera_and_shares_the_screen(
    server: OmniServer, launch_browser: LaunchBrowser, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A video call sends camera frames (the self-view mirrored), flips to the other camera, and a shared screen
    reaches the model in place of the camera at full HD, its text legible."""
    seen_sizes: list[tuple[int, int]] = []
    screen_seen = asyncio.Event()
    prefill = server.worker.prefill

    async def spy(conv: Any, msgs: list[dict[str, Any]], **kwargs: Any) -> int:
        """The images each prefill gives the model."""
        seen_sizes.extend(item.size for item in msgs[0]["content"] if isinstance(item, Image.Image))
        if (1920, 1080) in seen_sizes:
            screen_seen.set()
        return await prefill(conv, msgs, **kwargs)

    monkeypatch.setattr(server.worker, "prefill", spy)
    async with launch_browser() as browser:
        context, page, js_errors = await open_page(browser, server, viewport=DESKTOP)
        await page.click("#video-call")
        await wait_js(page, "window.omni && window.omni.sentFrames > 0")
        assert await page.is_visible("#preview")
        assert "mirrored" in (await page.get_attribute("#preview", "class") or "")
        await wait_js(page, "window.omni.visionTokens > 0", 25)
        assert (640, 480) in seen_sizes

        await page.wait_for_selector("#flip:not([hidden])")
        before = await page.evaluate(
            "document.getElementById('preview').srcObject.getVideoTracks()[0].getSettings().deviceId"
        )
        await page.click("#flip")
        await wait_js(
            page,
            f"document.getElementById('preview').srcObject.getVideoTracks()[0].getSettings().deviceId !== '{before}'",
        )
        assert await page.is_hidden("#controls-feedback")

        frames = await page.evaluate("window.omni.sentFrames")
        await page.click("#share")
        await wait_js(page, f"window.omni.sharing && window.omni.sentFrames > {frames} + 1")
        assert await page.evaluate("window.omni.lastFrameSize") == [1920, 1080]
        assert await page.text_content("#share") == "Stop sharing"
        assert "mirrored" not in (await page.get_attribute("#preview", "class") or "")
        async with asyncio.timeout(timeout(30)):  # the looping mic makes turns, whose units carry the frame
            await screen_seen.wait()
        await page.click("#share")
        await wait_js(page, "!window.omni.sharing")
        assert await page.text_content("#share") == "Share screen"

        await page.click("#hangup")
        await wait_js(page, "window.omni.closedReason === 'stopped'")
        assert not server.manager.sessions
        assert js_errors == []
        await context.close()


async def test_permissions_and_messages_next_to_their_controls(
    server: OmniServer, launch_browser: LaunchBrowser
) -> None:
    """On a phone, without grants: the blocked microphone is explained next to the call buttons; with the
    microphone but not the camera, a video call offers a voice call instead; the library's and reading's
    messages appear next to their buttons; settings survive a reload; the mic resampler keeps speech, drops aliases."""
    async with launch_browser(fake_ui=False) as browser:
        context, page, js_errors = await open_page(browser, server)
        await page.click("#voice-call")
        await wait_js(page, "!document.getElementById('call-feedback').hidden")
        await assert_next_to(page, ".buttons:has(#voice-call)", "#call-feedback", "microphone was blocked")
        assert not server.manager.sessions

        await page.click("#tts summary")
        await page.click("#tts-read")
        await wait_js(page, "window.omniVoices.errors.length === 1")
        await assert_next_to(page, "#tts-read", "#tts-feedback", "Type something to read aloud.")
        await page.click("#character-library summary")
        await page.click("#character-save")
        await wait_js(page, "window.omniVoices.errors.length === 2")
        await assert_next_to(page, "#character-save", "#character-feedback", "")
        assert await page.get_attribute("#character-feedback", "data-kind") == "error"

        await page.select_option("#language", "zh", force=True)
        await page.select_option("#sensitivity", "quick", force=True)
        await page.reload()
        assert await page.input_value("#language") == "zh"
        assert await page.input_value("#sensitivity") == "quick"
        stored = await page.evaluate("JSON.stringify(localStorage)")
        assert "quick" in stored and server.token is not None and server.token not in stored

        quality = await page.evaluate(RESAMPLER_CHECK)
        for rate, (speech, alias) in quality.items():
            assert abs(speech - 0.707) < 0.01 and alias < 0.001, (rate, speech, alias)

        await context.grant_permissions(["microphone"])
        await page.select_option("#language", "en", force=True)
        await page.click("#video-call")
        await wait_js(page, "document.querySelector('#call-feedback .inline-action') !== null")
        await assert_next_to(page, ".buttons:has(#video-call)", "#call-feedback", "camera is blocked")
        assert "microphone is allowed" in (await page.text_content("#call-feedback") or "")
        await page.click("#call-feedback .inline-action")
        await wait_js(page, "window.omni.states.includes('listening')")
        assert await page.is_hidden("#camera") and await page.is_hidden("#preview")
        await page.click("#hangup")
        await wait_js(page, "window.omni.closedReason === 'stopped'")
        await assert_every_message_next_to_its_control(page, "#setup")
        await assert_every_message_next_to_its_control(page, "#last-call")
        assert js_errors == []
        await context.close()


# The capture worklet's resampler, run in the page on a 1 kHz tone (kept) and a 10 kHz tone (above 8 kHz: it
# would alias into the speech band at 16 kHz, so it must go): RMS of each after resampling from 44.1 and 48 kHz.
RESAMPLER_CHECK = """async () => {
  const { Resampler } = await import('/audio/resample.js');
  const out = {};
  for (const rate of [44100, 48000]) {
    const rms = (f) => {
      const r = new Resampler(rate, 16000);
      const x = new Float32Array(rate);
      for (let i = 0; i < x.length; i++) x[i] = Math.sin(2 * Math.PI * f * i / rate);
      let s = 0, n = 0;
      for (let i = 0; i < x.length; i += 128) for (const y of r.process(x.subarray(i, i + 128))) { if (++n > 800) s += y * y; }
      return Math.sqrt(s / (n - 800));
    };
    out[rate] = [rms(1000), rms(10000)];
  }
  return out;
}"""


async def test_full_server_says_so(tmp_path: Path, launch_browser: LaunchBrowser) -> None:
    """With every slot taken and no room to wait, a second caller is told the server is full, next to the buttons."""
    settings = server_settings(tmp_path, max_sessions=1, max_queue=0)
    async with OmniServer(settings, build_tiny_engine(seed=0)) as server, launch_browser() as browser:
        first, page1, _ = await open_page(browser, server)
        await page1.click("#voice-call")
        await wait_js(page1, "window.omni && window.omni.states.includes('listening')")
        second, page2, js_errors = await open_page(browser, server)
        await page2.click("#voice-call")
        await wait_js(page2, "!document.getElementById('call-feedback').hidden")
        assert "server is full" in (await page2.text_content("#call-feedback") or "")
        assert await page2.evaluate("window.omni.closedReason") == "queue_full"
        assert js_errors == []
        await page1.click("#hangup")
        await wait_js(page1, "window.omni.closedReason === 'stopped'")
        await first.close()
        await second.close()
