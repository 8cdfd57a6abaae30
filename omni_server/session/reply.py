"""One reply: the model's output streamed to the listener chunk by chunk, and stopped at once on barge-in.

`Reply` owns everything a reply is while it lives: its task, the model's chunk stream, its playback
timeline at the listener (`Playback`), its timings (`TurnStats`), the text it has said, and how it ended.
The session starts one per turn and asks it to `interrupt()`; the reply tells the client
`response.created`, every text and audio delta the moment it exists, `response.listen` when it was
talked over, and hands itself to the session's `on_done` (which keeps the call's usage and sends
`response.done`). A reply the model failed while its state stayed intact (`ReplyFailed`) ends with
status `failed` and the reason; any other engine failure ends the call.

A speculative reply (started before the user's turn was confirmed, with a `Hold`) runs on spare model
time and keeps its chunks until `Hold.release`, when it sends them all at once and goes on as any
other; dropped before that, it has said nothing at all. Unconfirmed, it makes no more than
`SPECULATION_AHEAD_S` of speech (then waits for the release): enough to start without a gap, while
a speculation the user talks on through wastes no more model time, and a CPU-bound engine leaves the
cores to the end-of-turn decision that the reply is waiting for. A reply withdrawn because the user
went on (`cancel("user_continued")`) ends with `response.cancelled` and status `cancelled`.

Scheduling: every chunk is requested with the time by which it should start on the shared model
(`chunk_deadline`): the first soon after the turn ended, later ones in time for the listener not to
run dry (see docs/capacity.md).

Start-up hold: MiniCPM-o's second chunk brings 85 ms of audio for a whole TTS step, so a listener who
starts on the first chunk at once runs dry before the third. The first chunk's audio is held back for
`LeadIn.hold_s()` (lead_in.py: learned from the chunk timing of recent replies; nothing on a fast
engine), chunks that arrive meanwhile join it, and the reply reports the hold as `lead_in_ms`. Chunks
count from when the model made them, a speculative reply's too: its hold runs from its first chunk's
making, so a speculation already ahead at its release waits less or not at all, and `LeadIn` learns the
engine's own pace, not how long a turn took to be confirmed (which, counted from the release, taught it
that a slow engine needs no hold).

Reply audio goes to the client as `response.output_audio.delta` events, unless the transport carries
it on a media track: then an `AudioSink` gets each chunk instead, is told when the reply ends, and is
flushed on barge-in.

Must not import: websockets, aiortc, torch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from omni_server.engine.base import OUTPUT_SAMPLE_RATE_HZ, OutputChunk
from omni_server.engine.client import ConversationHandle, EngineClient, ReplyChunks, SpeculativeEngine
from omni_server.errors import ReplyFailed
from omni_server.protocol import (
    OutputAudioDelta,
    OutputTextDelta,
    ResponseCancelled,
    ResponseCreated,
    ResponseListen,
    Send,
)
from omni_server.session.lead_in import Arrival, LeadIn
from omni_server.session.playback import Playback
from omni_server.session.turn_end import Hold, TurnEnd

FIRST_CHUNK_SLACK_S = 0.5  # a reply's first chunk may yield this long to calls whose listener would run dry
PLAYBACK_GUARD_S = 0.1  # a later chunk is due this long (plus its own compute) before the listener runs dry
# An unconfirmed speculation stops after this much speech (MiniCPM-o: three TTS steps, 1.07 s): more than
# the start-up hold needs, and a next step (0.32 s at the real pace) comes long before it has played.
SPECULATION_AHEAD_S = 1.0


class AudioSink(Protocol):
    """A transport's outgoing audio (a WebRTC track): takes 24 kHz float32 reply audio instead of events."""

    def write(self, samples: npt.NDArray[np.float32]) -> None: ...

    def end(self) -> None:
        """The reply finished normally: play out what is queued."""

    def flush(self) -> None:
        """Barge-in: drop everything queued, now."""


@dataclass
class TurnStats:
    """Timings of one turn, sent with `response.done` and kept for metrics."""

    speech_end_at: float = 0.0  # when the turn detector ended the user's turn
    reply_start_at: float = 0.0  # when streaming_generate was called
    first_ready_at: float | None = None  # when the first audio chunk was there
    first_audio_at: float | None = None  # ... and when it went to the listener (after the start-up hold)
    compute_start_s: float = 0.0  # the conversation's model time when the turn ended
    compute_first_audio_s: float | None = None  # ... and when the first audio chunk was ready
    audio_s: float = 0.0
    playback: Playback = field(default_factory=Playback)
    end: TurnEnd | None = None  # which rule ended the turn (None: a greeting)
    speculation: Hold | None = None  # the reply was started before the turn was confirmed

    def as_dict(self, compute_s: float, late_units: int) -> dict[str, Any]:
        first = None if self.first_audio_at is None else round((self.first_audio_at - self.speech_end_at) * 1000, 1)
        to_first = self.compute_first_audio_s
        held = None
        if self.first_audio_at is not None and self.first_ready_at is not None:
            held = round((self.first_audio_at - self.first_ready_at) * 1000, 1)
        return {
            "end_of_turn_to_first_audio_ms": first,
            "lead_in_ms": held,
            "engine_to_first_audio_ms": None
            if to_first is None
            else round((to_first - self.compute_start_s) * 1000, 1),
            "prefill_tail_ms": round((self.reply_start_at - self.speech_end_at) * 1000, 1),
            "engine_ms": round((compute_s - self.compute_start_s) * 1000, 1),
            "audio_s": round(self.audio_s, 3),
            "late_units": late_units,
            "min_ahead_of_playback_ms": None
            if self.playback.min_ahead_s is None
            else round(self.playback.min_ahead_s * 1000, 1),
            "playback_underruns": self.playback.underruns,
            "underrun_ms": round(self.playback.underrun_s * 1000, 1),
            "turn_rule": None if self.end is None else self.end.rule,
            "speech_end_to_decision_ms": None if self.end is None else round(self.end.after_speech_ms, 1),
            **({"speculative": False} if self.speculation is None else self.speculation.timings()),
        }


class Reply:
    """A reply being generated and played; `start` it in the call's task group, `interrupt` it any time."""

    def __init__(
        self,
        response_id: str,
        stats: TurnStats,
        *,
        send: Send,
        sink: AudioSink | None,
        lead_in: LeadIn | None = None,
        clock: Callable[[], float] = time.monotonic,
        hold: Hold | None = None,
        on_first_audio: Callable[[float], None] | None = None,
    ) -> None:
        self.response_id = response_id
        self.stats = stats
        self._send = send
        self._sink = sink
        self._clock = clock
        self.hold = hold  # speculative: nothing is said until it is released
        self._on_first_audio = on_first_audio
        self._task: asyncio.Task[None] | None = None
        self.status = "completed"  # completed | interrupted | cancelled | failed
        self.failure: str | None = None  # why a failed reply failed, for the client
        self.barged_in = False  # interrupted by the user (not by the call ending)
        self.cancel_reason: str | None = None  # withdrawn (`cancel`), not talked over
        self._finishing = False  # the generation is over and the reply is saying how it ended
        self.text: list[str] = []
        self.output_tokens = 0  # context tokens the reply added
        self._lead_in = lead_in
        self._learning = lead_in is not None and not lead_in.measured  # hold until the second chunk
        self.arrivals: list[Arrival] = []  # (when each audio chunk was made, its duration), for `LeadIn`
        self._startup: list[npt.NDArray[np.float32]] = []  # audio held back by the start-up hold
        self._hold_until: float | None = None  # while set, audio is held
        self._pull: asyncio.Future[OutputChunk | None] | None = None  # a chunk being made at a speculation's release
        self._waited = False  # a speculation that stopped at SPECULATION_AHEAD_S until its release

    @property
    def playback(self) -> Playback:
        return self.stats.playback

    @property
    def active(self) -> bool:
        """True while the model is still making this reply."""
        return self._task is not None and not self._task.done()

    @property
    def heard(self) -> bool:
        """False for a speculation that was never released: the client knows nothing of it."""
        return self.hold is None or self.hold.released.is_set()

    def ahead_s(self, now: float) -> float:
        """Reply audio the listener still has buffered at `now` (0 once the reply was interrupted)."""
        return self.playback.ahead_s(now) if self.status == "completed" and self.heard else 0.0

    def start(
        self,
        tg: asyncio.TaskGroup,
        worker: EngineClient[Any],
        conv: ConversationHandle,
        gen_kwargs: dict[str, Any],
        *,
        closing: Callable[[], bool],
        on_done: Callable[[Reply], Awaitable[None]],
    ) -> None:
        """Generate on `conv` in a task of `tg`; `closing()` true stops after the chunk in hand."""
        self._task = tg.create_task(self._run(worker, conv, gen_kwargs, closing, on_done), name=self.response_id)

    async def wait(self, timeout_s: float | None = None) -> None:
        """Until the model has finished the reply (or `timeout_s` passed)."""
        if self._task is not None:
            await asyncio.wait([self._task], timeout=timeout_s)

    def cancel(self, reason: str | None = None) -> None:
        """Barge-in without waiting: silence the listener now and cancel the generation (the reply says
        `response.listen`, or `response.cancelled` with `reason`, before its `response.done`)."""
        if reason is not None:
            self.cancel_reason = reason
        if self._sink is not None and self.heard:
            self._sink.flush()  # a reply generated in full may still be playing on the track
        task = self._task
        if task is not None and not task.done() and not task.cancelling() and not self._finishing:
            task.cancel()  # once, and not in its clean-up: that would cut short the events it owes

    async def interrupt(self) -> None:
        """Barge-in: silence the listener now and stop generating within one chunk."""
        self.cancel()
        task = self._task
        if task is None or task.done():
            return
        # Wait without `suppress(CancelledError)`: that would also swallow a cancellation of the caller
        # (the call ending meanwhile), which then went on to start a reply in a closing task group.
        await asyncio.wait([task])

    def chunk_deadline(self, step_s: float) -> float:
        """When the next chunk must start: in time for the listener not to run dry; the first soon after the turn."""
        end_at = self.playback.end_at
        if end_at is None and self._hold_until is not None:  # the held audio starts playing then
            end_at = self._hold_until + sum(len(a) for a in self._startup) / OUTPUT_SAMPLE_RATE_HZ
        if end_at is None:
            return self.stats.speech_end_at + FIRST_CHUNK_SLACK_S
        return end_at - PLAYBACK_GUARD_S - step_s

    async def _run(
        self,
        worker: EngineClient[Any],
        conv: ConversationHandle,
        gen_kwargs: dict[str, Any],
        closing: Callable[[], bool],
        on_done: Callable[[Reply], Awaitable[None]],
    ) -> None:
        hold = self.hold
        if hold is None:
            await self._send(ResponseCreated(self.response_id))
        before = conv.context_tokens
        stream: ReplyChunks | None = None
        try:
            if hold is None:
                stream = await worker.reply(conv, **gen_kwargs)
            else:
                assert isinstance(worker, SpeculativeEngine)
                speculative = await worker.reply(conv, speculative=True, **gen_kwargs)
                stream, hold.on_release = speculative, speculative.confirm
                if hold.released.is_set():  # confirmed while the partial unit was being prefilled
                    speculative.confirm(self.chunk_deadline(0.0))
                await self._stream(await self._held(stream, hold), stream, conv, closing)
            if hold is None:
                await self._stream([], stream, conv, closing)
            if self.failure is not None:  # a speculation that failed while held, now released
                self.status = "failed"
        except ReplyFailed as e:  # the model state is intact: this reply ends, the call goes on
            self.status, self.failure = "failed", e.message
            await self._release()  # what the start-up hold kept back was made: it is said
            if hold is not None:
                await hold.released.wait()  # said once the turn is confirmed (dropped: cancelled, unsaid)
        except asyncio.CancelledError:
            self.status, self.barged_in = "interrupted", not closing()
            if self.cancel_reason is not None or not self.heard:
                self.status, self.barged_in = "cancelled", False
            raise
        finally:
            self._finishing = True  # from here on a cancel would cut the clean-up short: see `cancel`
            if self._sink is not None and self.status not in ("completed", "failed") and self.heard:
                self._sink.flush()  # before anything that awaits: barge-in silences at once
            elif self._sink is not None and self.heard:
                self._sink.end()
            if self._pull is not None:  # released, then stopped before it was taken
                self._pull.cancel()
                await asyncio.wait([self._pull])
            if stream is not None:
                await asyncio.shield(stream.close())
            if self._lead_in is not None and not self._waited:  # a reply that waited says nothing of the pace
                self._lead_in.observe(self.arrivals, ended=self.status == "completed")
            self.output_tokens = max(0, conv.context_tokens - before)
            if self.heard:  # a speculation never released has said nothing and leaves no trace
                try:
                    if self.status == "cancelled" or self.cancel_reason is not None:  # withdrawn as it ended
                        reason = self.cancel_reason or "user_continued"
                        await asyncio.shield(self._send(ResponseCancelled(self.response_id, reason=reason)))
                    elif self.barged_in:
                        await asyncio.shield(self._send(ResponseListen(self.response_id, reason="interrupted")))
                finally:
                    await asyncio.shield(on_done(self))

    async def _held(self, stream: ReplyChunks, hold: Hold) -> list[tuple[OutputChunk | None, float]]:
        """Chunks made on spare model time until the turn is confirmed (all of them, if the reply ends first;
        no more than `SPECULATION_AHEAD_S` of speech), each with when it was made. A chunk still being
        made at the release is left to `_next` (`_pull`): what was made goes out at once, not after it."""
        held: list[tuple[OutputChunk | None, float]] = []
        released = asyncio.ensure_future(hold.released.wait())
        pull: asyncio.Future[OutputChunk | None] | None = None
        try:
            while not hold.released.is_set():
                if held and held[-1][0] is None:
                    await released
                    break
                if hold.audio_s >= SPECULATION_AHEAD_S:
                    self._waited = True
                    await released
                    break
                pull = asyncio.ensure_future(stream.next(read_ahead=True))
                await asyncio.wait([pull, released], return_when=asyncio.FIRST_COMPLETED)
                if not pull.done():
                    self._pull = pull
                    break
                try:
                    chunk = pull.result()
                except ReplyFailed as e:  # kept to say once the turn is confirmed, after what was made
                    self.failure = e.message
                    chunk = None
                held.append((chunk, self._clock()))
                hold.chunks += chunk is not None
                hold.audio_s += 0.0 if chunk is None else chunk.duration_s
        finally:
            released.cancel()
            if pull is not None and not pull.done() and pull is not self._pull:  # dropped, or the call ends
                pull.cancel()
                await asyncio.wait([pull])
        return held

    async def _stream(
        self,
        held: list[tuple[OutputChunk | None, float]],
        stream: ReplyChunks,
        conv: ConversationHandle,
        closing: Callable[[], bool],
    ) -> None:
        stats, rid = self.stats, self.response_id
        step_s = 0.0  # model time of a chunk: the next one is due that much before it is needed
        while True:
            if held:
                chunk, made_at = held.pop(0)
            else:
                chunk = await self._next(stream, self.chunk_deadline(step_s))
                made_at = self._clock()
            if chunk is None:
                break
            if self.arrivals:  # the first chunk's cost says nothing about later ones
                step_s = stream.step_s
            if chunk.text:
                self.text.append(chunk.text)
                await self._send(OutputTextDelta(rid, chunk.text))
            if chunk.audio.size:
                now = self._clock()
                self.arrivals.append((made_at, chunk.duration_s))
                stats.audio_s += chunk.duration_s
                if stats.first_ready_at is None:
                    stats.first_ready_at = now
                    stats.compute_first_audio_s = conv.compute_s
                    hold_s = 0.0 if self._lead_in is None else self._lead_in.hold_s()
                    self._hold_until = made_at + hold_s if hold_s > 0 else None
                self._startup.append(chunk.audio)
                due = self._hold_until
                if due is None or now >= due or (self._learning and len(self.arrivals) >= 2):
                    await self._release()
            if closing():
                self.status = "interrupted"
                return
        await self._release()  # a reply shorter than the hold: nothing more is coming

    async def _next(self, stream: ReplyChunks, deadline: float) -> OutputChunk | None:
        """The next chunk (or the one a speculation was making when it was released); audio held back
        meanwhile is released when its hold ends."""
        pull, self._pull = self._pull, None
        if pull is None:
            if self._hold_until is None:
                return await stream.next(deadline=deadline, read_ahead=True)
            pull = asyncio.ensure_future(stream.next(deadline=deadline, read_ahead=True))
        try:
            if self._hold_until is not None:
                done, _ = await asyncio.wait([pull], timeout=max(0.0, self._hold_until - self._clock()))
                if not done:
                    await self._release()
            return await pull
        finally:
            if not pull.done():  # cancelled while waiting (barge-in): the pull goes with it
                pull.cancel()
                await asyncio.wait([pull])

    async def _release(self) -> None:
        """Audio held back goes to the listener now (and every chunk after it at once)."""
        self._hold_until = None
        held, self._startup = self._startup, []
        for audio in held:
            now = self._clock()
            if self.stats.first_audio_at is None:
                self.stats.first_audio_at = now
                if self._on_first_audio is not None:
                    self._on_first_audio(now)
            self.stats.playback.on_audio(now, len(audio) / OUTPUT_SAMPLE_RATE_HZ)
            if self._sink is not None:
                self._sink.write(audio)
            else:
                ahead_ms = round(self.stats.playback.ahead_s(now) * 1000, 1)
                await self._send(OutputAudioDelta(self.response_id, audio, OUTPUT_SAMPLE_RATE_HZ, ahead_ms))
