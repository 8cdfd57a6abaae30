"""One reply: the model's output streamed to the listener chunk by chunk, and stopped at once on barge-in.

`Reply` owns everything a reply is while it lives: its task, the model's chunk stream, its playback
timeline at the listener (`Playback`), its timings (`TurnStats`), the text it has said, and how it ended.
The session starts one per turn and asks it to `interrupt()`; the reply tells the client
`response.created`, every text and audio delta the moment it exists, `response.listen` when it was
talked over, and hands itself to the session's `on_done` (which keeps the call's usage and sends
`response.done`). A reply the model failed while its state stayed intact (`ReplyFailed`) ends with
status `failed` and the reason; any other engine failure ends the call.

Scheduling: every chunk is requested with the time by which it should start on the shared model
(`chunk_deadline`): the first soon after the turn ended, later ones in time for the listener not to
run dry (see docs/capacity.md).

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

from omni_server.engine.base import OUTPUT_SAMPLE_RATE_HZ
from omni_server.engine.client import ConversationHandle, EngineClient, ReplyChunks
from omni_server.errors import ReplyFailed
from omni_server.protocol import OutputAudioDelta, OutputTextDelta, ResponseCreated, ResponseListen, Send
from omni_server.session.playback import Playback

FIRST_CHUNK_SLACK_S = 0.5  # a reply's first chunk may yield this long to calls whose listener would run dry
PLAYBACK_GUARD_S = 0.1  # a later chunk is due this long (plus its own compute) before the listener runs dry


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
    first_audio_at: float | None = None
    compute_start_s: float = 0.0  # the conversation's model time when the turn ended
    compute_first_audio_s: float | None = None  # ... and when the first audio chunk was ready
    audio_s: float = 0.0
    playback: Playback = field(default_factory=Playback)

    def as_dict(self, compute_s: float, late_units: int) -> dict[str, Any]:
        first = None if self.first_audio_at is None else round((self.first_audio_at - self.speech_end_at) * 1000, 1)
        to_first = self.compute_first_audio_s
        return {
            "end_of_turn_to_first_audio_ms": first,
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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.response_id = response_id
        self.stats = stats
        self._send = send
        self._sink = sink
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self.status = "completed"  # completed | interrupted | failed
        self.failure: str | None = None  # why a failed reply failed, for the client
        self.barged_in = False  # interrupted by the user (not by the call ending)
        self.text: list[str] = []
        self.output_tokens = 0  # context tokens the reply added

    @property
    def playback(self) -> Playback:
        return self.stats.playback

    @property
    def active(self) -> bool:
        """True while the model is still making this reply."""
        return self._task is not None and not self._task.done()

    def ahead_s(self, now: float) -> float:
        """Reply audio the listener still has buffered at `now` (0 once the reply was interrupted)."""
        return 0.0 if self.status == "interrupted" else self.playback.ahead_s(now)

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

    async def interrupt(self) -> None:
        """Barge-in: silence the listener now and stop generating within one chunk."""
        if self._sink is not None:
            self._sink.flush()  # a reply generated in full may still be playing on the track
        task = self._task
        if task is None or task.done():
            return
        task.cancel()  # the reply says `response.listen` before its `response.done`
        # Wait without `suppress(CancelledError)`: that would also swallow a cancellation of the caller
        # (the call ending meanwhile), which then went on to start a reply in a closing task group.
        await asyncio.wait([task])

    def chunk_deadline(self, step_s: float) -> float:
        """When the next chunk must start: in time for the listener not to run dry; the first soon after the turn."""
        end_at = self.playback.end_at
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
        await self._send(ResponseCreated(self.response_id))
        before = conv.context_tokens
        stream: ReplyChunks | None = None
        try:
            stream = await worker.reply(conv, **gen_kwargs)
            await self._stream(stream, conv, closing)
        except ReplyFailed as e:  # the model state is intact: this reply ends, the call goes on
            self.status, self.failure = "failed", e.message
        except asyncio.CancelledError:
            self.status, self.barged_in = "interrupted", not closing()
            raise
        finally:
            if self._sink is not None and self.status != "completed":
                self._sink.flush()  # before anything that awaits: barge-in silences at once
            elif self._sink is not None:
                self._sink.end()
            if stream is not None:
                await asyncio.shield(stream.close())
            self.output_tokens = max(0, conv.context_tokens - before)
            try:
                if self.barged_in:
                    await asyncio.shield(self._send(ResponseListen(self.response_id, reason="interrupted")))
            finally:
                await asyncio.shield(on_done(self))

    async def _stream(self, stream: ReplyChunks, conv: ConversationHandle, closing: Callable[[], bool]) -> None:
        stats, rid = self.stats, self.response_id
        step_s = 0.0  # model time of a chunk: the next one is due that much before it is needed
        while (chunk := await stream.next(deadline=self.chunk_deadline(step_s), read_ahead=True)) is not None:
            if stats.first_audio_at is not None:  # the first chunk's cost says nothing about later ones
                step_s = stream.step_s
            if chunk.text:
                self.text.append(chunk.text)
                await self._send(OutputTextDelta(rid, chunk.text))
            if chunk.audio.size:
                now = self._clock()
                if stats.first_audio_at is None:
                    stats.first_audio_at = now
                    stats.compute_first_audio_s = conv.compute_s
                stats.audio_s += chunk.duration_s
                stats.playback.on_audio(now, chunk.duration_s)
                if self._sink is not None:
                    self._sink.write(chunk.audio)
                else:
                    ahead_ms = round(stats.playback.ahead_s(now) * 1000, 1)
                    await self._send(OutputAudioDelta(rid, chunk.audio, OUTPUT_SAMPLE_RATE_HZ, ahead_ms))
            if closing():
                self.status = "interrupted"
                return
