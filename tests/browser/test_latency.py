"""The page measures each turn itself, on both media paths: speech end (its microphone going quiet) →
the reply audible (what it plays going loud), split into parts that add up, and shown in the panel."""

from __future__ import annotations

import re

import pytest

from omni_server.app import OmniServer
from tests.browser.conftest import LaunchBrowser
from tests.browser.test_call import open_page, wait_js

pytestmark = pytest.mark.browser


@pytest.mark.parametrize("transport", ["webrtc", "websocket"])
async def test_turn_latency_is_measured_and_shown(
    server: OmniServer, launch_browser: LaunchBrowser, transport: str
) -> None:
    """A turn's latency: the total from the page's own meters, parts that sum to it, and the panel showing them."""
    async with launch_browser() as browser:
        context, page, js_errors = await open_page(browser, server, transport=transport)
        await page.click("#voice-call")
        await wait_js(page, "window.omni.turns && window.omni.turns.some((t) => t.parts !== null)", 30)
        trace = await page.evaluate("window.omni")
        assert trace["transport"] == transport
        turn = next(t for t in trace["turns"] if t["parts"] is not None)
        parts = turn["parts"]
        assert 0 < turn["totalMs"] < 10_000, turn
        assert abs(sum(parts.values()) - turn["totalMs"]) <= 3, turn  # rounding of five parts
        assert 300 < parts["decision"] < 3_000, turn  # the server's 500 ms silence window, seen from the page
        assert parts["model"] > 0 and parts["playout"] > -20, turn
        assert turn["timings"]["end_of_turn_to_first_audio_ms"] > 0
        if transport == "websocket":
            assert turn["decidedMs"] < turn["firstArrivalMs"] <= turn["audibleMs"] + 1, turn
        assert trace["clientLatencyMs"] is not None and trace["clientLatencyMs"] > 0

        for field in ("client", "decision", "prefill", "model", "hold", "playout", "server"):
            shown = await page.text_content(f"#lat-{field}") or ""
            assert re.match(r"-?\d+ ms( \(\w+\))?$", shown), (field, shown)  # "(silence)": the rule that decided
        widths = await page.eval_on_selector_all(
            "#lat-bar span", "spans => spans.map((s) => parseFloat(s.style.width))"
        )
        assert 90 < sum(widths) <= 100.5, widths

        await page.click("#hangup")
        await wait_js(page, "window.omni.closedReason === 'stopped'")
        assert js_errors == [] and (await page.evaluate("window.omni.errors")) == []
        await context.close()
