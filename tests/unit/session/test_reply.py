"""Reply's start-up hold: the first audio waits for the learned need (or, unmeasured, for the second chunk),
later chunks go at once, barge-in during the hold sends nothing, and every reply that tested the pace
teaches the LeadIn."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from omni_server.engine.base import OutputChunk
from omni_server.session.lead_in import LeadIn
from omni_server.session.reply import Reply, TurnStats
from omni_server.session.turn_end import Hold
from tests.conftest import timeout

STEP = np.full(12_800, 0.1, np.float32)  # 0.533 s at 24 kHz


class Stream:
    """A reply's chunks, handed out when the test puts them (None ends the reply)."""

    def __init__(self) -> None:
        self.chunks: asyncio.Queue[OutputChunk | None] = asyncio.Queue()
        self.finished = False
        self.step_s = 0.0
        self.deadlines: list[float | None] = []

    async def next(self, *, deadline: float | None = None, read_ahead: bool = False) -> OutputChunk | None:
        self.deadlines.append(deadline)
        return await self.chunks.get()

    async def close(self) -> None:
        self.finished = True


class Worker:
    def __init__(self, stream: Stream) -> None:
        self.stream = stream

    async def reply(self, conv: Any, **kwargs: Any) -> Stream:
        return self.stream


class Conversation:
    id, context_tokens, compute_s = "c", 0, 0.0


class Sink:
    """The WebRTC track's side: when each chunk was written."""

    def __init__(self) -> None:
        self.writes: list[tuple[float, int]] = []
        self.flushes = 0
        self.wrote = asyncio.Event()

    def write(self, samples: np.ndarray[Any, Any]) -> None:
        self.writes.append((time.monotonic(), len(samples)))
        self.wrote.set()

    def end(self) -> None:
        pass

    def flush(self) -> None:
        self.flushes += 1


async def _sent() -> None:
    """Let the reply task take what was put (it never waits on anything else here)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def _play(lead_in: LeadIn, script: Any, hold: Hold | None = None) -> tuple[Reply, Sink, Stream]:
    """A reply (speculative with `hold`) on a stream the `script` feeds, until it is done."""
    stream, sink = Stream(), Sink()
    done = asyncio.Event()

    async def on_done(_: Reply) -> None:
        done.set()

    async def send(_: Any) -> None:
        pass

    now = time.monotonic()
    stats = TurnStats(speech_end_at=now, reply_start_at=now, speculation=hold)
    reply = Reply("resp_1", stats, send=send, sink=sink, lead_in=lead_in, hold=hold)
    worker = Worker(stream) if hold is None else SpeculativeWorker(stream)
    async with asyncio.TaskGroup() as tg:
        reply.start(tg, worker, Conversation(), {}, closing=lambda: False, on_done=on_done)
        await script(reply, stream, sink)
        await asyncio.wait_for(done.wait(), timeout(5))
    return reply, sink, stream


async def test_first_audio_waits_for_the_learned_hold_then_chunks_go_at_once() -> None:
    """With a measured need, the first chunk is written `hold_s` after it came; the next ones on arrival."""
    lead_in = LeadIn(margin_s=0.04, max_s=0.5)
    lead_in.observe([(0.0, 0.4), (0.5, 0.1)], ended=False)  # needed 0.1 s: holds 0.1 × 1.25 + 0.04
    hold_s = lead_in.hold_s()
    came: list[float] = []

    async def script(reply: Reply, stream: Stream, sink: Sink) -> None:
        came.append(time.monotonic())
        await stream.chunks.put(OutputChunk("a", STEP))
        await asyncio.wait_for(sink.wrote.wait(), timeout(5))
        await stream.chunks.put(OutputChunk("", STEP))
        await _sent()
        await stream.chunks.put(None)

    reply, sink, stream = await _play(lead_in, script)
    (first_at, _), (second_at, _) = sink.writes
    assert first_at - came[0] >= hold_s - 0.005
    timings = reply.stats.as_dict(0.0, 0)
    assert abs(timings["lead_in_ms"] - hold_s * 1000) < 60
    # While held, the next chunk was due as if playback began when the hold ends.
    assert stream.deadlines[1] is not None and stream.deadlines[1] > came[0] + hold_s
    assert len(lead_in.needs) == 1  # its chunks were all there before the first had played: nothing learned


async def test_unmeasured_hold_ends_with_the_second_chunk() -> None:
    """Before anything was measured, the first chunk waits for the second (not for max_s), then both go."""
    lead_in = LeadIn(max_s=5.0)

    async def script(reply: Reply, stream: Stream, sink: Sink) -> None:
        await stream.chunks.put(OutputChunk("", STEP))
        await _sent()
        assert not sink.writes  # held
        await stream.chunks.put(OutputChunk("", STEP))
        await asyncio.wait_for(sink.wrote.wait(), timeout(5))
        await stream.chunks.put(None)

    reply, sink, _ = await _play(lead_in, script)
    assert [n for _, n in sink.writes] == [12_800, 12_800]
    assert reply.stats.as_dict(0.0, 0)["lead_in_ms"] < 1000
    assert not lead_in.measured  # both chunks were there before the first had played: the pace untested


async def test_barge_in_during_the_hold_sends_nothing() -> None:
    """Interrupted while its first chunk is held, a reply writes no audio and flushes the sink."""
    lead_in = LeadIn(max_s=5.0)

    async def script(reply: Reply, stream: Stream, sink: Sink) -> None:
        await stream.chunks.put(OutputChunk("", STEP))
        await _sent()
        await reply.interrupt()

    reply, sink, _ = await _play(lead_in, script)
    assert sink.writes == [] and sink.flushes >= 1 and reply.status == "interrupted"
    assert reply.stats.first_audio_at is None


async def test_interrupting_a_reply_that_is_closing_its_stream_keeps_its_response_done() -> None:
    """A reply stopped by the call closing, still waiting for its stream to close (the model's step in
    flight), is not cancelled by interrupt(): it still hands itself to on_done (response.done)."""
    stream, closed = Stream(), asyncio.Event()
    ending: list[str] = []

    async def slow_close() -> None:
        await closed.wait()

    stream.close = slow_close  # type: ignore[method-assign]

    async def on_done(reply: Reply) -> None:
        ending.append(reply.status)

    async def send(_: Any) -> None:
        pass

    call_closing = False
    reply = Reply("resp_1", TurnStats(), send=send, sink=None)
    async with asyncio.TaskGroup() as tg:
        reply.start(tg, Worker(stream), Conversation(), {}, closing=lambda: call_closing, on_done=on_done)
        call_closing = True
        await stream.chunks.put(OutputChunk("words", np.zeros(0, np.float32)))
        await _sent()  # the reply stops after this chunk and waits for its stream to close
        assert reply.active and not ending
        interrupting = tg.create_task(reply.interrupt())
        await _sent()
        closed.set()
        await interrupting
    assert ending == ["interrupted"]


class SpeculativeWorker(Worker):
    """A model that can start a reply before the turn is confirmed (the parts of SpeculativeEngine a reply uses)."""

    async def checkpoint(self, conv: Any) -> Any:
        return None

    async def rollback(self, conv: Any, checkpoint: Any) -> None:
        pass

    def expect_work(self, conv: Any, notice_s: float | None) -> None:
        pass

    async def reply(self, conv: Any, *, speculative: bool = False, **kwargs: Any) -> Stream:
        self.stream.confirm = lambda deadline: None  # type: ignore[attr-defined]
        return self.stream


async def test_a_released_speculation_goes_out_without_waiting_for_the_chunk_in_the_making() -> None:
    """What a speculation made goes out from its release (after the start-up hold, counted from when its first
    chunk was made), not once the chunk the model was making meanwhile is done; it teaches the LeadIn too."""
    lead_in = LeadIn(margin_s=0.04, max_s=0.5)
    lead_in.observe([(0.0, 0.4), (0.5, 0.1)], ended=False)  # holds ~0.17 s
    hold_s = lead_in.hold_s()
    hold = Hold(response_id="resp_1")
    made: list[float] = []
    released: list[float] = []
    first: list[float] = []

    async def script(reply: Reply, stream: Stream, sink: Sink) -> None:
        made.append(time.monotonic())
        await stream.chunks.put(OutputChunk("a", STEP))
        await _sent()
        await asyncio.sleep(0.05)
        assert sink.writes == []  # nothing is said before the release
        released.append(time.monotonic())
        hold.release(released[0], released[0] + 1.0)  # the model is still making the next chunk
        await asyncio.wait_for(sink.wrote.wait(), timeout(5))
        first.append(time.monotonic())
        await stream.chunks.put(OutputChunk("", STEP))
        await _sent()
        await stream.chunks.put(None)

    _, sink, _ = await _play(lead_in, script, hold)
    assert hold_s - 0.005 <= first[0] - made[0] < hold_s + timeout(0.1)
    assert first[0] - released[0] < hold_s - 0.04 + timeout(0.1)  # the hold began before the release
    assert len(sink.writes) == 2 and len(lead_in.needs) == 1  # (made faster than played: nothing learned)


async def test_a_speculation_released_late_teaches_the_engines_own_pace() -> None:
    """A speculation confirmed long after its chunks were made goes out at once, and the LeadIn learns the need
    from when the model made them: counted from the release, a slow engine would look as if it needed nothing."""
    lead_in = LeadIn(margin_s=0.04, max_s=0.5)
    lead_in.observe([(0.0, 0.4), (0.5, 0.1)], ended=False)
    hold = Hold(response_id="resp_1")
    short = STEP[:2_400]  # 0.1 s: the next chunk, made 0.3 s later, comes 0.2 s after it has played
    released: list[float] = []

    async def script(reply: Reply, stream: Stream, sink: Sink) -> None:
        await stream.chunks.put(OutputChunk("a", short))
        await _sent()
        await asyncio.sleep(0.3)
        await stream.chunks.put(OutputChunk("", STEP))
        await _sent()
        await asyncio.sleep(0.3)
        released.append(time.monotonic())
        hold.release(released[0], released[0] + 1.0)
        await asyncio.wait_for(sink.wrote.wait(), timeout(5))
        for chunk in (STEP, short, None):  # the reply's last TTS step (it teaches nothing of the pace)
            await stream.chunks.put(None if chunk is None else OutputChunk("", chunk))

    _, sink, _ = await _play(lead_in, script, hold)
    assert sink.writes[0][0] - released[0] < timeout(0.05)  # past its hold already: out at the release
    assert 0.2 - 0.01 <= lead_in.needs[-1] < 0.2 + timeout(0.05)
