"""The voice library in a real Chromium: read aloud, record a voice with the fake microphone, call in that voice,
and a role-play call that carries its character's name."""

from __future__ import annotations

import numpy as np
import pytest

from omni_server.app import OmniServer
from tests.browser.conftest import LaunchBrowser
from tests.browser.test_call import assert_next_to, open_page, wait_js

pytestmark = pytest.mark.browser


async def test_read_aloud_record_a_voice_call_in_it_and_role_play(
    server: OmniServer, launch_browser: LaunchBrowser
) -> None:
    """Text is read in the built-in voice, playing from its first chunk; ~8 s recorded from the mic become a voice
    the next call uses and text is read in; a role-play call is titled and subtitled with its character's name."""
    async with launch_browser() as browser:
        context, page, js_errors = await open_page(browser, server)
        cookies = {c["name"]: c for c in await context.cookies()}
        assert cookies["omni_user"]["httpOnly"] and cookies["omni_user"]["secure"]
        user = server.library.identity.verify(cookies["omni_user"]["value"])
        assert user is not None
        await wait_js(page, "document.querySelectorAll('#character-select option').length === 4")  # none + 3 examples

        await page.click("#tts summary")
        await page.fill("#tts-text", "Hello, this is the built-in voice.")
        await page.click("#tts-read")  # no voice chosen: the built-in one
        await page.wait_for_selector("#tts-download:not([hidden])")
        await wait_js(
            page, "window.omniVoices.reading.startedAt !== null && window.omniVoices.reading.playedSamples > 0"
        )
        reading = await page.evaluate("window.omniVoices.reading")
        assert reading["firstChunkAt"] < reading["doneAt"], reading  # playing began before the reading was complete
        await assert_next_to(page, "#tts-read", "#tts-feedback", "Read ")
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

        await page.fill("#tts-text", "Hello, this is my voice.")
        first = await page.get_attribute("#tts-download", "href")
        await page.click("#tts-read")
        await page.wait_for_selector(f"#tts-download:not([hidden]):not([href='{first}'])")
        href = await page.get_attribute("#tts-download", "href")
        assert href is not None and href.startswith("blob:")
        assert "Read" in (await page.text_content("#tts-feedback") or "")

        await page.select_option("#character-select", "example-ship-captain")
        await page.click("#voice-call")
        await wait_js(page, "window.omni.states.includes('speaking')")  # the captain greets first
        assert await page.text_content("#call-title") == "Captain Reed"
        assert await page.text_content("#orb-initial") == "C"
        await wait_js(page, "document.querySelector('.subtitles .assistant .who').textContent === 'Captain Reed: '")
        await page.click("#hangup")
        await wait_js(page, "window.omni.closedReason === 'stopped'")
        assert js_errors == []
        await context.close()
