"""Reply audio flows without a hole at the real model's pace, on both media paths.

The tiny engine takes MiniCPM-o 2.6's published time (`--engine-cost minicpmo-2.6`): its second chunk
holds 85 ms of audio for a whole TTS step, so a listener who starts on the first chunk at once would run
dry ~0.1 s before the third. Each test listens to several replies and fails on any gap of 20 ms or more in
the first 3 s of one: over the WebSocket a client plays the deltas on a timeline from their arrival; over
WebRTC an aiortc peer records the track, and the gap is silence in the decoded audio itself.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from omni_server.app import OmniServer
from omni_server.engine.cost import EngineCost
from omni_server.engine.tiny import build_tiny_engine
from omni_server.session.lead_in import LeadIn
from tests.conftest import server_settings, timeout
from tests.integration.realtime_client import RawClient
from tests.integration.webrtc_client import WebRtcClient

TURNS = 3  # the first reply is the server's first (nothing measured yet), the others learn from it
GAP_S = 0.02  # an audible gap
CHECKED_S = 3.0  # of each reply, from its first audio
SILENT = 0.002  # decoded samples below this are silence (the tiny engine's speech is noise of about ±0.1)
REAL_PACE = EngineCost.preset("minicpmo-2.6")


class _Client(Protocol):
    async def start(self) -> object: ...

    async def close(self) -> None: ...


C = TypeVar("C", bound=_Client)


@asynccontextmanager
async def _call(tmp_path: Path, connect: Callable[[OmniServer], Awaitable[C]]) -> AsyncIterator[C]:
    """A server at the real pace and one started call on it, closed at the end."""
    # Turns end by the silence window only: Smart Turn may judge "Hello there." finished, and the rest of the
    # question then continues the turn and withdraws its reply (`user_continued`), which is not what is tested.
    settings = server_settings(tmp_path, turn_model=False)
    async with OmniServer(settings, build_tiny_engine(cost=REAL_PACE)) as server:
        # On a loaded machine the tiny engine's own compute stretches every TTS step and the event loop
        # lags: the hold's margin scales like the tests' timeouts, and its cap (an operator's latency
        # choice, 350 ms by default) is lifted, so that what is tested is that the hold follows the engine.
        server.manager.lead_in = LeadIn(margin_s=timeout(0.1), max_s=1.0)
        client = await connect(server)
        try:
            await client.start()
            yield client
        finally:
            await client.close()


def timeline_gaps(deltas: list[tuple[float, float]]) -> list[float]:
    """Gaps heard by a player that starts on the first delta and plays each one when it arrives (or when
    the audio before it has played): (arrival time, duration) in, gap lengths within `CHECKED_S` out."""
    gaps = []
    start = end = deltas[0][0]
    for arrived, duration_s in deltas:
        if end - start >= CHECKED_S:
            break
        if arrived > end:
            gaps.append(arrived - end)
            end = arrived
        end += duration_s
    return gaps


def silent_runs(samples: npt.NDArray[np.float32], rate_hz: int) -> list[float]:
    """Runs of silence (seconds) between the first and last audible samples of `samples`."""
    loud = np.flatnonzero(np.abs(samples) >= SILENT)
    if not loud.size:
        return []
    between = np.diff(loud) - 1  # silent samples between consecutive audible ones
    return [n / rate_hz for n in between[between > 0]]


async def test_websocket_replies_play_without_a_gap(tmp_path: Path, question: npt.NDArray[np.float32]) -> None:
    """Played from their arrival times, the audio deltas of every reply leave no gap ≥ 20 ms in its first 3 s."""
    async with _call(tmp_path, RawClient.connect) as client:
        for turn in range(TURNS):
            await client.speak(question)
            deltas: list[tuple[float, float]] = []
            while (event := await client.recv())["type"] != "response.done":
                if event["type"] == "response.output_audio.delta":
                    samples = len(event["audio"]) * 3 // 4 // 4  # base64 of float32
                    deltas.append((time.monotonic(), samples / event["sample_rate"]))
            assert event["response"]["status"] == "completed", event
            assert len(deltas) >= 3 and event["timings"]["lead_in_ms"] is not None, event
            gaps = [round(g, 3) for g in timeline_gaps(deltas) if g >= GAP_S]
            assert not gaps, (turn, gaps, event["timings"])


async def test_webrtc_replies_play_without_a_gap(tmp_path: Path, question: npt.NDArray[np.float32]) -> None:
    """The reply track, decoded by an aiortc peer, has no silence ≥ 20 ms in the first 3 s of any reply."""
    async with _call(tmp_path, WebRtcClient.connect) as client:
        for turn in range(TURNS):
            heard_before = len(client.heard.samples)
            client.say(question)
            done = await client.until("response.done")
            assert done["response"]["status"] == "completed", done
            reply_s = min(CHECKED_S, done["timings"]["audio_s"])
            audio = await _heard(client, heard_before, reply_s)
            rate = client.heard.rate_hz
            first = int(np.flatnonzero(np.abs(audio) >= SILENT)[0])
            gaps = [round(g, 3) for g in silent_runs(audio[first : first + int(reply_s * rate)], rate) if g >= GAP_S]
            assert not gaps, (turn, gaps, done["timings"])


async def _heard(client: WebRtcClient, since: int, reply_s: float) -> npt.NDArray[np.float32]:
    """The track's audio from frame `since` on, once it holds `reply_s` of audio after its first audible sample."""
    deadline = time.monotonic() + timeout(10)
    while time.monotonic() < deadline:
        if len(client.heard.samples) > since:
            audio = np.concatenate(client.heard.samples[since:])
            loud = np.flatnonzero(np.abs(audio) >= SILENT)
            if loud.size and len(audio) - loud[0] >= (reply_s + 0.1) * client.heard.rate_hz:
                return audio
        await client.heard_more()
    raise AssertionError("the reply's audio did not arrive on the track")
