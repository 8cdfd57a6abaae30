"""No call dies of a model quirk: short turn tails, a reply the decoder fails, special tokens in the text.

The tiny engine reproduces each quirk as the real MiniCPM-o 2.6 code shows it (official_code_run.md):
audio of 320 samples or fewer fails in a prefill, and `--engine-faults` fails replies with the real
decoder's IndexError, before the failed chunk's cache is kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from omni_server.app import OmniServer
from omni_server.engine.tiny import build_tiny_engine
from tests.conftest import server_settings
from tests.integration.realtime_client import RawClient

MANUAL = {"turn_detection": {"type": "none"}}
NOISE = np.random.default_rng(0).uniform(-0.3, 0.3, 16000 + 320).astype(np.float32)


async def turn(client: RawClient, samples: int = 16000) -> dict[str, Any]:
    """Append `samples` of noise, commit, and return the reply's `response`."""
    await client.append(NOISE[:samples])
    await client.send("input.commit")
    response: dict[str, Any] = (await client.until("response.done"))["response"]
    return response


async def close(client: RawClient) -> None:
    """The call ends because the client closes it, with no error on the way."""
    assert not client.of_type("error")
    await client.send("session.close")
    assert (await client.until("session.closed"))["reason"] == "stopped"


@pytest.mark.parametrize("tail", [1, 160, 320])
async def test_a_turn_ending_in_a_tail_of_twenty_ms_or_less_gets_its_reply(tmp_path: Path, tail: int) -> None:
    """1 s plus a 1-320 sample tail, committed: the reply completes and the call takes another turn."""
    async with OmniServer(server_settings(tmp_path), build_tiny_engine(seed=0)) as server:
        client = await RawClient.connect(server)
        await client.start(**MANUAL)
        for _ in range(2):
            assert (await turn(client, 16000 + tail))["status"] == "completed"
        await close(client)


async def test_a_reply_the_decoder_fails_ends_alone_and_the_call_goes_on(tmp_path: Path) -> None:
    """With every reply failing as the real decoder can, each turn ends `failed` with a reason, never the call."""
    async with OmniServer(server_settings(tmp_path), build_tiny_engine(seed=0, faults=1.0)) as server:
        client = await RawClient.connect(server)
        await client.start(**MANUAL)
        for _ in range(3):
            done = await turn(client)
            assert done["status"] == "failed" and "IndexError" in done["reason"] and "goes on" in done["reason"]
        await close(client)


async def test_replies_failing_now_and_then_keep_the_conversation_whole(tmp_path: Path) -> None:
    """Faults in 30% of the reply steps: turns end completed or failed, every later turn is answered."""
    async with OmniServer(server_settings(tmp_path), build_tiny_engine(seed=0, faults=0.3)) as server:
        client = await RawClient.connect(server)
        await client.start(**MANUAL)
        statuses = [(await turn(client))["status"] for _ in range(6)]
        assert set(statuses) <= {"completed", "failed"} and "failed" in statuses
        await close(client)
