"""Isolation: calls interleaved on one engine each get exactly what they get alone, token for token and
sample for sample; a barge-in in one call leaves the others' replies untouched.

Every call runs through a real `CallSession` (silero-vad turns, 1-s units, the engine worker) on one
tiny engine with a fixed seed; the engine sleeps a little per chunk so that replies overlap in time.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from omni_server.engine.cost import EngineCost
from omni_server.engine.tiny import build_tiny_engine
from omni_server.engine.worker import EngineWorker
from omni_server.protocol import ServerEvent
from omni_server.session.call_config import CallConfig
from omni_server.session.session import CallSession
from omni_server.session.vad_feed import VadFeed
from tests import speech
from tests.conftest import timeout

Samples = npt.NDArray[np.float32]
PIECE = 1600  # 0.1 s pieces, as a client sends them
TAIL = np.zeros(16000, np.float32)  # silence after speech, longer than the 500 ms that ends a turn
# Slow enough that two replies overlap on the worker, fast enough for a unit test.
COST = EngineCost(first_chunk_s=0.02, audio_rtf=0.05, prefill_s_per_unit=0.002)


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Samples:
    if not speech.have_tools():
        pytest.fail("espeak-ng and sox are required (make test installs them)")
    path = speech.make_speech_wav(speech.SENTENCES[1], tmp_path_factory.mktemp("speech") / "story.wav")
    return speech.load_f32(path)


@pytest.fixture
async def worker() -> Any:
    worker = EngineWorker(build_tiny_engine(seed=7, cost=COST))
    yield worker
    worker.close()


@dataclass
class Reply:
    status: str
    text: str
    audio: bytes  # the float32 samples exactly as sent


@dataclass
class Recorder:
    """A call's `send`: keeps its events, and the order of all calls' events in a shared timeline."""

    call_id: str
    timeline: list[tuple[str, str]]
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def send(self, event: ServerEvent) -> None:
        self.events.append((event.type, event.wire()))
        self.timeline.append((self.call_id, event.type))
        self.changed.set()

    def count(self, event_type: str) -> int:
        return sum(1 for t, _ in self.events if t == event_type)

    async def until(self, event_type: str, count: int) -> None:
        async with asyncio.timeout(timeout(30)):
            while self.count(event_type) < count:
                self.changed.clear()
                await self.changed.wait()

    def timings(self) -> list[dict[str, Any]]:
        return [f["timings"] for t, f in self.events if t == "response.done"]

    def replies(self) -> list[Reply]:
        text: dict[str, list[str]] = {}
        audio: dict[str, list[bytes]] = {}
        done: list[Reply] = []
        for event_type, f in self.events:
            if event_type == "response.output_text.delta":
                text.setdefault(f["response_id"], []).append(f["text"])
            elif event_type == "response.output_audio.delta":
                audio.setdefault(f["response_id"], []).append(base64.b64decode(f["audio"]))
            elif event_type == "response.done":
                rid = f["response"]["id"]
                done.append(Reply(f["response"]["status"], "".join(text.get(rid, [])), b"".join(audio.get(rid, []))))
        return done


def push(session: CallSession, audio: Samples) -> None:
    """Speech then a second of silence, queued at once in 0.1 s pieces."""
    audio = np.concatenate([audio, TAIL])
    for start in range(0, len(audio), PIECE):
        session.push_audio(audio[start : start + PIECE])


async def converse(
    worker: EngineWorker,
    vad_feed: VadFeed,
    recorder: Recorder,
    turns: Sequence[Samples],
    *,
    config: CallConfig | None = None,
    barge_in: Samples | None = None,
) -> list[Reply]:
    """One call: each turn is spoken once the previous reply is done. With `barge_in`, that speech is
    pushed as soon as the first reply's first audio has been sent (talking over it)."""
    session = CallSession(recorder.call_id, worker, config or CallConfig(), recorder.send, vad_feed)
    await session.start()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(session.run())
        for n, audio in enumerate(turns, 1):
            push(session, audio)
            if n == 1 and barge_in is not None:
                await recorder.until("response.output_audio.delta", 1)
                push(session, barge_in)
                n += 1
            await recorder.until("response.done", n)
        session.close()
    return recorder.replies()


def overlapping(timeline: list[tuple[str, str]], a: str, b: str) -> bool:
    """Did the audio chunks of calls `a` and `b` alternate (their spans in the timeline overlap)?"""
    spans = {}
    for call in (a, b):
        at = [i for i, (c, t) in enumerate(timeline) if c == call and t == "response.output_audio.delta"]
        spans[call] = (at[0], at[-1])
    return spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1]


async def run_alone_and_together(
    worker: EngineWorker, vad_feed: VadFeed, scripts: dict[str, list[Samples]]
) -> tuple[dict[str, list[Reply]], dict[str, list[Reply]], list[tuple[str, str]]]:
    alone = {}
    for call_id, turns in scripts.items():
        alone[call_id] = await converse(worker, vad_feed, Recorder(call_id, []), turns)
    timeline: list[tuple[str, str]] = []
    recorders = {call_id: Recorder(call_id, timeline) for call_id in scripts}
    async with asyncio.TaskGroup() as tg:
        tasks = {cid: tg.create_task(converse(worker, vad_feed, recorders[cid], t)) for cid, t in scripts.items()}
    return alone, {cid: task.result() for cid, task in tasks.items()}, timeline


def assert_exact(alone: list[Reply], together: list[Reply]) -> None:
    assert len(alone) == len(together) >= 2
    for a, t in zip(alone, together, strict=True):
        assert a.status == t.status == "completed"
        assert t.text == a.text
        assert len(a.audio) > 16_000 * 4  # over a second of speech at 24 kHz float32
        assert t.audio == a.audio


async def test_two_interleaved_calls_get_exactly_what_they_get_alone(
    worker: EngineWorker, vad_feed: VadFeed, question: Samples, story: Samples
) -> None:
    """Two calls speaking at once, two turns each: every reply is token- and sample-identical to the solo run."""
    scripts = {"call-a": [question, story], "call-b": [story, question]}
    alone, together, timeline = await run_alone_and_together(worker, vad_feed, scripts)
    assert overlapping(timeline, "call-a", "call-b")
    for call_id in scripts:
        assert_exact(alone[call_id], together[call_id])
    assert together["call-a"][0].audio != together["call-b"][0].audio  # different calls, different replies


async def test_five_interleaved_calls_get_exactly_what_they_get_alone(
    worker: EngineWorker, vad_feed: VadFeed, question: Samples, story: Samples
) -> None:
    """Five calls at once on one engine: each one's replies match its solo run exactly."""
    scripts = {f"call-{n}": [question, story] if n % 2 else [story, question] for n in range(5)}
    alone, together, timeline = await run_alone_and_together(worker, vad_feed, scripts)
    calls = list(scripts)
    assert all(any(overlapping(timeline, a, b) for b in calls if b != a) for a in calls)
    for call_id in scripts:
        assert_exact(alone[call_id], together[call_id])


async def test_barge_in_in_one_call_leaves_the_other_exact(
    worker: EngineWorker, vad_feed: VadFeed, question: Samples, story: Samples
) -> None:
    """Call B is interrupted by its user while call A is speaking: A's replies are exactly its solo ones."""
    a_turns = [question, story]
    solo = await converse(worker, vad_feed, Recorder("call-a", []), a_turns)
    timeline: list[tuple[str, str]] = []
    a, b = Recorder("call-a", timeline), Recorder("call-b", timeline)
    long_replies = CallConfig(max_new_tokens=96, min_new_tokens=3)  # B is still speaking when its user cuts in
    async with asyncio.TaskGroup() as tg:
        a_task = tg.create_task(converse(worker, vad_feed, a, a_turns))
        b_task = tg.create_task(converse(worker, vad_feed, b, [story], config=long_replies, barge_in=question))
    b_replies = b_task.result()
    assert [r.status for r in b_replies] == ["interrupted", "completed"]
    assert b.count("response.listen") == 1
    assert overlapping(timeline, "call-a", "call-b")
    assert_exact(solo, a_task.result())
    # Every audio delta says how far the reply is ahead of the listener's playback; the first, its own length.
    aheads = [f["ahead_of_playback_ms"] for t, f in a.events if t == "response.output_audio.delta"]
    assert aheads[0] == 448.0 and all(ms >= 0 for ms in aheads)
    for timings in a.timings():
        assert timings["playback_underruns"] >= 0 and timings["underrun_ms"] >= 0
        assert timings["min_ahead_of_playback_ms"] >= 0
