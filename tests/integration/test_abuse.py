"""Abusive input is refused per call, in plain words, and never takes the engine or the loop from another call."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from omni_server.app import OmniServer
from omni_server.engine.tiny import build_tiny_engine
from tests.conftest import server_settings
from tests.integration.realtime_client import RawClient, b64_audio

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
