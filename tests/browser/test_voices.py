"""The voice library in a real Chromium: record a voice with the fake microphone, save it, call in that voice."""

from __future__ import annotations

import numpy as np
import pytest

from omni_server.app import OmniServer
from tests.browser.conftest import LaunchBrowser
from tests.browser.test_call import open_page, wait_js

pytestmark = pytest.mark.browser


async def test_record_a_voice_and_call_in_it(server: OmniServer, launch_browser: LaunchBrowser) -> None:
    """Record ~8 s from the mic, the server keeps the trimmed speech, the next call uses it, and text is read in it."""
    async with launch_browser() as browser:
        context, page, js_errors = await open_page(browser, server)
        cookies = {c["name"]: c for c in await context.cookies()}
        assert cookies["omni_user"]["httpOnly"] and cookies["omni_user"]["secure"]
        user = server.library.identity.verify(cookies["omni_user"]["value"])
        assert user is not None
        await wait_js(page, "document.querySelectorAll('#character-select option').length === 4")  # none + 3 examples
        await page.click("#voice-library summary")
        await page.fill("#voice-name", "Fake mic")
        await page.click("#record-start")
        await wait_js(page, "window.omniVoices.recordedS >= 8")
        await page.click("#record-stop")
        await wait_js(page, "window.omniVoices.saved.length === 1 || window.omniVoices.errors.length > 0")
        trace = await page.evaluate("window.omniVoices")
        assert trace["errors"] == [] and len(trace["saved"]) == 1, trace
        voice_id = trace["saved"][0]
        assert await page.input_value("#voice-select") == voice_id
        assert "Fake mic" in await page.text_content("#voice-list")

        await page.click("#voice-call")
        await wait_js(page, "window.omni && window.omni.states.includes('listening')")
        (session,) = server.manager.sessions.values()
        stored = server.manager.voices.voice(voice_id, user)
        assert session.config.ref_audio is not None
        assert len(session.config.ref_audio) == pytest.approx(stored.duration_s * 16_000, abs=160)
        assert np.abs(session.config.ref_audio).max() > 0.1
        await wait_js(page, "window.omni.states.includes('speaking')")
        await page.click("#hangup")
        await wait_js(page, "window.omni.states.includes('ended')")

        await page.click("#tts summary")
        await page.fill("#tts-text", "Hello, this is my voice.")
        await page.click("#tts-read")
        await page.wait_for_selector("#tts-download:not([hidden])")
        href = await page.get_attribute("#tts-download", "href")
        assert href is not None and href.startswith("blob:")
        assert "Read" in await page.text_content("#voice-status")
        assert js_errors == []
        await context.close()
