"""Abusive input is refused per call, in plain words, and never takes the engine or the loop from another call."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from omni_server.app import OmniServer
from omni_server.engine.tiny import build_tiny_engine
from tests.conftest import server_settings
from tests.integration.realtime_client import RawClient, b64_audio
from tests.integration.webrtc_client import WebRtcClient

MANUAL = {"turn_detection": {"type": "none"}}


async def test_input_faster_than_real_time_is_refused_and_another_call_still_replies(tmp_path: Path) -> None:
    """Back-to-back 5 s appends: two fit the 10 s burst, the rest get rate_limited; a second call takes a turn."""
    async with OmniServer(server_settings(tmp_path), build_tiny_engine()) as server:
        flooder, other = await RawClient.connect(server), await RawClient.connect(server)
        await flooder.start(**MANUAL)
        await other.start(**MANUAL)
        five_s = b64_audio(np.zeros(16000 * 5, np.float32))
        for _ in range(8):
            await flooder.send("input.append", input={"audio": five_s})
        await flooder.send("nope")  # answered after everything before it: the end of the flood's errors
        await other.append(np.random.default_rng(0).uniform(-0.3, 0.3, 16000).astype(np.float32))
        await other.send("input.commit")
        assert (await other.until("response.done"))["response"]["status"] == "completed"
        errors = []
        while (error := (await flooder.until("error"))["error"])["code"] != "unknown_event":
            errors.append(error)
        assert [e["code"] for e in errors] == ["rate_limited"] * 6  # 2 x 5 s fit the burst
        assert "faster than real time" in errors[0]["message"]
        assert not other.of_type("error")
        await flooder.close()
        await other.close()


@pytest.mark.parametrize("kind", ["huge", "bogus_setup", "empty_mid", "junk"])
async def test_bad_webrtc_offers_are_invalid_sdp_and_the_server_goes_on(server: OmniServer, kind: str) -> None:
    """A 6.7 MB offer of 6,000 m-lines, `a=setup:bogus`, an empty mid, junk: `invalid_sdp`, then a normal call."""
    client = await WebRtcClient.connect(server)
    await client.signal_until("session.queue_done")
    client.pc.addTrack(client.mic)
    await client.pc.setLocalDescription(await client.pc.createOffer())
    sdp = client.pc.localDescription.sdp
    offers = {
        "huge": sdp + sdp[sdp.index("m=audio") : sdp.index("m=application")] * 6000,
        "bogus_setup": sdp.replace("a=setup:actpass", "a=setup:bogus"),
        "empty_mid": sdp.replace("a=mid:0", "a=mid:"),
        "junk": "v=0\r\nm=audio x y z\r\n",
    }
    await client.signal("session.init", payload={})
    await client.signal("webrtc.offer", sdp=offers[kind])
    error = await client.signal_until("error")
    assert error["error"]["code"] == "invalid_sdp", error
    assert (await client.signal_until("session.closed"))["reason"] == "error"
    await client.close()
    assert not server.manager.sessions and server.manager.admission.active == 0
    other = await WebRtcClient.connect(server)
    assert (await other.start())["transport"] == "webrtc"
    await other.close()
