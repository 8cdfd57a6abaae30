"""One call: its turns, its 1-second units, its replies, its limits.

Audio arrives in pieces of any size; silero-vad and `TurnDetector` decide when the user speaks. While
nobody speaks nothing is prefilled (idle seconds must not eat the context): the last `preroll_ms` of
audio are kept in a ring buffer, and when speech starts they open the turn, so its first syllable is
kept. During a turn every completed 1-second unit (`[audio]`, or `["<unit>", frame, audio]` in a video
call) is prefilled at once, so at the end of the turn only the partial last unit is left to prefill
before `streaming_generate` starts. Every output chunk is sent the moment it exists.

Barge-in: speech during a reply (or the client's `force_listen`) abandons the reply generator, which
the model marks with `<|tts_eos|>` at the next prefill, and tells the client to drop queued audio.

Reply audio goes to the client as base64 `response.output_audio.delta` events, unless the transport
carries it on a media track: then it sets `audio_sink`, which gets each chunk instead, is told when a
reply ends, and is flushed on barge-in.

Context: MiniCPM-o was trained to 8192 tokens and never truncates its cache. When the next unit plus a
reply would not fit, the call rolls over to a fresh model conversation: the system prompt (and so the
reference voice) is prefilled again, and the assistant's last replies go in as a short text note.

Must not import: websockets, aiortc, torch.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from PIL import Image

from omni_server import protocol
from omni_server.engine.base import INPUT_SAMPLE_RATE_HZ, OUTPUT_SAMPLE_RATE_HZ, EngineInfo
from omni_server.engine.client import ConversationHandle, EngineClient, ReplyChunks
from omni_server.errors import OmniError, ProtocolError, SessionEnded
from omni_server.media.vad import SileroVadModel, VadStream
from omni_server.protocol import (
    ConversationTruncated,
    Error,
    OutputAudioDelta,
    OutputTextDelta,
    ResponseCreated,
    ResponseDone,
    ResponseListen,
    Send,
    usage_payload,
)
from omni_server.session.playback import Playback
from omni_server.session.turns import SpeechStarted, SpeechStopped, TurnConfig, TurnDetector
from omni_server.session.units import PreRoll, UnitCutter

logger = logging.getLogger(__name__)

Samples = npt.NDArray[np.float32]
# Scheduling (see docs/capacity.md): every model call carries the time by which it should start.
PREFILL_BOUND_S = 1.0  # a unit prefilled later than this after its last sample arrived counts as late
# ... but is due much sooner: the input loop (and so turn detection) waits on each prefill, and a unit
# costs tens of ms, so it goes ahead of any reply chunk whose listener has more than this buffered.
PREFILL_START_S = 0.2
FIRST_CHUNK_SLACK_S = 0.5  # a reply's first chunk may yield this long to calls whose listener would run dry
PLAYBACK_GUARD_S = 0.1  # a later chunk is due this long (plus its own compute) before the listener runs dry
# Pieces up to this size run silero on the event loop (at most ~2 ms); longer ones go to a thread.
_INLINE_VAD_SAMPLES = INPUT_SAMPLE_RATE_HZ // 4
_CLOSE_CHUNK_WAIT_S = 1.0
_VOICE_MODES = {"assistant": "audio_assistant", "roleplay": "audio_roleplay", "voice_cloning": "voice_cloning"}
_MEMORY_NOTE = {
    "en": "(Earlier in this call, which was too long to keep in full, you said: {text})",
    "zh": "（本次通话较长，之前的内容已省略。你之前说过：{text}）",
}
_GREETING = {  # role-play: the user turn that makes the character speak first
    "en": 'The call has just started. Greet me in character, beginning with: "{greeting}"',
    "zh": "通话刚刚开始。请以角色的身份向我问好，开头说：“{greeting}”",
}


class AudioSink(Protocol):
    """A transport's outgoing audio (a WebRTC track): takes 24 kHz float32 reply audio instead of events."""

    def write(self, samples: Samples) -> None: ...

    def end(self) -> None:
        """The reply finished normally: play out what is queued."""

    def flush(self) -> None:
        """Barge-in: drop everything queued, now."""


@dataclass(frozen=True)
class CallConfig:
    """Everything one call needs, resolved from server settings and the client's `session.init`."""

    video: bool = False
    conversation_mode: str = "assistant"  # assistant | roleplay | voice_cloning
    language: str = "en"
    instructions: str | None = None
    ref_audio: Samples | None = None
    greeting: str | None = None  # role-play: spoken first, before the user says anything
    max_new_tokens: int = 256
    min_new_tokens: int = 0  # >0 keeps the model from ending a reply early (benchmarks use it for long replies)
    temperature: float | None = None
    tts_enabled: bool = True
    max_slice_nums: int | None = None
    turn_detection: bool = True
    turn: TurnConfig = field(default_factory=TurnConfig)
    barge_in: bool = True
    preroll_ms: int = 500
    max_context_tokens: int = 8192
    max_call_s: float = 1800.0
    idle_timeout_s: float = 120.0
    max_pending_audio_s: float = 30.0

    def model_mode(self) -> str:
        return "omni" if self.video and self.conversation_mode == "assistant" else _VOICE_MODES[self.conversation_mode]


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


class CallSession:
    """The state of one call; `run()` drives it until a limit, the client or an error ends it."""

    def __init__(
        self,
        call_id: str,
        worker: EngineClient[Any],
        config: CallConfig,
        send: Send,
        vad_model: SileroVadModel,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.id = call_id
        self._worker = worker
        self.config = config
        self._send = send
        self._clock = clock
        self._vad = VadStream(vad_model)
        self._turns = TurnDetector(config.turn)
        self._preroll = PreRoll(config.preroll_ms * INPUT_SAMPLE_RATE_HZ // 1000)
        self._cutter = UnitCutter(INPUT_SAMPLE_RATE_HZ)
        self._inbox: asyncio.Queue[tuple[Samples, Image.Image | None, float] | str] = asyncio.Queue()
        self._received_at = clock()  # when the audio being processed arrived (units are due from then)
        self._pending_samples = 0
        self._frame: Image.Image | None = None
        self._in_turn = not config.turn_detection  # manual turn-taking: every sample belongs to a turn
        self._conv_index = itertools.count()
        self._conv: ConversationHandle = worker.open(self._next_conv_id())
        self._reply_task: asyncio.Task[None] | None = None
        self._replies: deque[str] = deque(maxlen=3)  # recent reply texts, for a context roll-over
        self._unit_tokens = 100  # estimate, refined by each prefill
        self._tg: asyncio.TaskGroup | None = None
        self._closing = False
        self.started_at = clock()
        self.turns: list[dict[str, Any]] = []
        self.usage = {"input_tokens": 0, "output_tokens": 0, "audio_tokens": 0, "vision_tokens": 0}
        self.late_units = 0
        self.client_underruns = 0  # as the client's player reports them
        self.audio_sink: AudioSink | None = None  # set before `run` by a transport with an audio track
        self.playback_underruns = 0  # as the server sees them (`Playback`), over all replies
        self._playback: Playback | None = None  # the reply being played, if any

    # ---- called by the transport -------------------------------------------------------------------

    def push_audio(self, samples: Samples, frame: Image.Image | None = None) -> None:
        """Queue 16 kHz float32 audio (with the camera frame sent alongside it, if any).

        Refuses input far ahead of what the model has consumed."""
        limit = int(self.config.max_pending_audio_s * INPUT_SAMPLE_RATE_HZ)
        if self._pending_samples + len(samples) > limit:
            raise ProtocolError(
                "Audio is arriving much faster than real time; this piece was dropped.", code="input_overflow"
            )
        self._pending_samples += len(samples)
        self._inbox.put_nowait((samples, frame, self._clock()))

    @property
    def pending_audio_s(self) -> float:
        """Audio received but not yet taken up by the call (the input lag)."""
        return self._pending_samples / INPUT_SAMPLE_RATE_HZ

    def push_frame(self, image: Image.Image) -> None:
        """Keep only the latest camera frame (for frames arriving apart from audio, as on WebRTC);
        each unit takes the one current when it completes."""
        self._frame = image

    def force_listen(self) -> None:
        self._inbox.put_nowait("force_listen")

    def commit(self) -> None:
        """End the user's turn now (manual turn-taking)."""
        self._inbox.put_nowait("commit")

    def close(self, reason: str = "stopped") -> None:
        self._closing = True  # a reply in flight stops after the chunk it is making (see `_reply`)
        self._inbox.put_nowait("close:" + reason)

    # ---- life cycle -------------------------------------------------------------------------------

    async def release(self) -> None:
        """Free the model conversation (for a call that ends before `run`)."""
        await self._worker.release(self._conv)

    async def start(self) -> None:
        """Prefill the system prompt of a fresh conversation."""
        await self._prefill_system_prompt()

    async def run(self) -> str:
        """Serve the call; returns the `session.closed` reason."""
        reason = "stopped"
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                if self.config.greeting:
                    await self._greet(self.config.greeting)
                tg.create_task(self._input_loop(), name=f"{self.id}-input")
                tg.create_task(self._duration_limit(), name=f"{self.id}-limit")
        except* SessionEnded as group:
            ended = group.exceptions[0]
            assert isinstance(ended, SessionEnded)
            reason = ended.code
        except* OmniError as group:
            failure = group.exceptions[0]
            assert isinstance(failure, OmniError)
            logger.warning("session failed: %s", failure.code, extra={"session_id": self.id})
            await self._send(Error.of(failure))
            reason = "error"
        finally:
            await self._worker.release(self._conv)
        return reason

    async def _duration_limit(self) -> None:
        await asyncio.sleep(self.config.max_call_s)
        raise SessionEnded("The call reached its maximum duration.", code="max_duration")

    async def _input_loop(self) -> None:
        while True:
            try:
                item = await asyncio.wait_for(self._inbox.get(), self.config.idle_timeout_s)
            except TimeoutError:
                raise SessionEnded("No audio arrived for too long.", code="idle_timeout") from None
            if isinstance(item, str):
                await self._control(item)
                continue
            samples, frame, self._received_at = item
            self._pending_samples -= len(samples)
            if frame is not None:
                self._frame = frame
            await self._on_audio(samples)

    async def _control(self, command: str) -> None:
        if command == "force_listen":
            await self._interrupt()
        elif command == "commit":
            if self._in_turn or self._cutter.pending_samples:
                await self._end_turn()
        elif command.startswith("close:"):
            if self._reply_task is not None:
                # The reply ends after the chunk being made; a chunk still queued behind other calls'
                # more urgent work is not waited for (it could be seconds away), so the reply is dropped then.
                await asyncio.wait([self._reply_task], timeout=_CLOSE_CHUNK_WAIT_S)
                await self._interrupt()
            raise SessionEnded("The client closed the session.", code=command.removeprefix("close:"))

    # ---- turns -----------------------------------------------------------------------------------

    async def _on_audio(self, samples: Samples) -> None:
        if not self.config.turn_detection:
            await self._feed_units(samples)
            return
        if len(samples) <= _INLINE_VAD_SAMPLES:
            probs = self._vad.feed(samples)  # ~0.25 ms a window: cheaper than a thread hop
        else:
            probs = await asyncio.to_thread(self._vad.feed, samples)
        events = self._turns.feed(probs)
        fed = False
        if not self._in_turn:
            self._preroll.push(samples)
        for event in events:
            if isinstance(event, SpeechStarted) and not self._in_turn:
                if self._replying() and not self.config.barge_in:
                    continue  # the user talks over the reply, and this call does not allow barge-in
                await self._interrupt()
                self._in_turn, fed = True, True
                await self._send(protocol.SpeechStarted(audio_start_ms=_ms(event.sample_index)))
                await self._feed_units(self._preroll.take())
            elif isinstance(event, SpeechStopped) and self._in_turn:
                await self._send(protocol.SpeechStopped(audio_end_ms=_ms(event.sample_index)))
                await self._end_turn()
        if self._in_turn and not fed:
            await self._feed_units(samples)

    async def _feed_units(self, samples: Samples) -> None:
        for unit in self._cutter.feed(samples):
            await self._prefill_unit(unit, arrived=self._received_at)

    async def _end_turn(self) -> None:
        await self._interrupt()  # manual turns: a commit during a reply replaces it (one reply at a time)
        self._in_turn = not self.config.turn_detection
        stats = TurnStats(speech_end_at=self._clock(), compute_start_s=self._conv.compute_s)
        tail = self._cutter.flush()
        if tail is not None:
            await self._prefill_unit(tail, arrived=stats.speech_end_at, bound_s=0.0)  # the reply waits on it
        stats.reply_start_at = self._clock()
        assert self._tg is not None
        self._reply_task = self._tg.create_task(self._reply(stats), name=f"{self.id}-reply")

    async def _greet(self, greeting: str) -> None:
        """Start a reply to a text turn asking for the greeting; the user can talk over it as over any reply."""
        prompt = _GREETING[self.config.language].format(greeting=greeting)
        before = self._conv.context_tokens
        after = await self._worker.prefill(self._conv, [{"role": "user", "content": [prompt]}])
        self._count_input(after - before, audio_s=0.0)
        now = self._clock()
        stats = TurnStats(speech_end_at=now, reply_start_at=now, compute_start_s=self._conv.compute_s)
        assert self._tg is not None
        self._reply_task = self._tg.create_task(self._reply(stats), name=f"{self.id}-greeting")

    def _replying(self) -> bool:
        return self._reply_task is not None and not self._reply_task.done()

    async def _interrupt(self) -> None:
        """Barge-in: stop the reply within one chunk and tell the client to drop queued audio."""
        if self.audio_sink is not None:
            self.audio_sink.flush()  # a reply generated in full may still be playing on the track
        task = self._reply_task
        if task is None or task.done():
            return
        task.cancel()  # the reply says `response.listen` before its `response.done`
        # Wait without `suppress(CancelledError)`: that would also swallow a cancellation of this task
        # (the call ending meanwhile), which then went on to start a reply in a closing task group.
        await asyncio.wait([task])

    # ---- model calls ------------------------------------------------------------------------------

    async def _prefill_system_prompt(self, note: str | None = None) -> None:
        cfg = self.config
        if cfg.conversation_mode == "voice_cloning" and cfg.ref_audio is None:
            raise ProtocolError("Voice-cloning mode needs a reference voice (voice.ref_audio_base64).")
        mode, language, ref = cfg.model_mode(), cfg.language, cfg.ref_audio
        msg = await self._worker.run(
            self._conv, lambda m: m.get_sys_prompt(ref_audio=ref, mode=mode, language=language)
        )
        extra = [text for text in (cfg.instructions, note) if text]
        if extra:
            msg = {**msg, "content": [*msg["content"], *("\n" + text for text in extra)]}
        before = self._conv.context_tokens
        after = await self._worker.prefill(self._conv, [msg], max_slice_nums=cfg.max_slice_nums)
        self._count_input(after - before, audio_s=0.0 if ref is None else len(ref) / INPUT_SAMPLE_RATE_HZ)

    async def _prefill_unit(self, audio: Samples, *, arrived: float, bound_s: float = PREFILL_START_S) -> None:
        # Manual turns: input during a reply talks over it. A prefill must never run under a live reply
        # generator (it could not be resumed afterwards), so the reply ends first.
        await self._interrupt()
        reserve = self.config.max_new_tokens + 32
        if self._conv.context_tokens + self._unit_tokens + reserve > self.config.max_context_tokens:
            await self._roll_over()
        frame = self._frame if self.config.video else None
        content: list[Any] = [audio]
        if self.config.video:
            content = ["<unit>", audio] if frame is None else ["<unit>", frame, audio]
        before = self._conv.context_tokens
        after = await self._worker.prefill(
            self._conv,
            [{"role": "user", "content": content}],
            max_slice_nums=self.config.max_slice_nums,
            deadline=arrived + bound_s,
        )
        if self._clock() - arrived > PREFILL_BOUND_S:
            self.late_units += 1
        added = after - before
        self._unit_tokens = max(self._unit_tokens, added)
        self._count_input(added, audio_s=len(audio) / INPUT_SAMPLE_RATE_HZ, frames=int(frame is not None))

    async def _roll_over(self) -> None:
        dropped = self._conv.context_tokens
        await self._worker.release(self._conv)
        self._conv = self._worker.open(self._next_conv_id())
        recent = " ".join(self._replies)[-600:]
        note = _MEMORY_NOTE[self.config.language].format(text=recent) if recent else None
        await self._prefill_system_prompt(note)
        logger.info("context rolled over", extra={"session_id": self.id, "dropped_tokens": dropped})
        await self._send(ConversationTruncated(reason="context_full", dropped_tokens=dropped))

    async def _reply(self, stats: TurnStats) -> None:
        response_id = f"resp_{len(self.turns) + 1}"
        await self._send(ResponseCreated(response_id))
        gen_kwargs: dict[str, Any] = {"max_new_tokens": self.config.max_new_tokens}
        gen_kwargs["generate_audio"] = self.config.tts_enabled
        if self.config.min_new_tokens:
            gen_kwargs["min_new_tokens"] = self.config.min_new_tokens
        if self.config.temperature is not None:
            gen_kwargs["temperature"] = self.config.temperature
        before = self._conv.context_tokens
        status, text, barged_in = "completed", [], False
        stream: ReplyChunks | None = None
        self._playback = stats.playback
        step_s = 0.0  # model time of a chunk: the next one is due that much before it is needed
        try:
            stream = await self._worker.reply(self._conv, **gen_kwargs)
            while True:
                chunk = await stream.next(deadline=self._chunk_deadline(stats, step_s), read_ahead=True)
                if chunk is None:
                    break
                if stats.first_audio_at is not None:  # the first chunk's cost says nothing about later ones
                    step_s = stream.step_s
                if chunk.text:
                    text.append(chunk.text)
                    await self._send(OutputTextDelta(response_id, chunk.text))
                if chunk.audio.size:
                    now = self._clock()
                    if stats.first_audio_at is None:
                        stats.first_audio_at = now
                        stats.compute_first_audio_s = self._conv.compute_s
                    stats.audio_s += chunk.duration_s
                    stats.playback.on_audio(now, chunk.duration_s)
                    if self.audio_sink is not None:
                        self.audio_sink.write(chunk.audio)
                    else:
                        ahead_ms = round(stats.playback.ahead_s(now) * 1000, 1)
                        await self._send(OutputAudioDelta(response_id, chunk.audio, OUTPUT_SAMPLE_RATE_HZ, ahead_ms))
                if self._closing:
                    status = "interrupted"
                    break
        except asyncio.CancelledError:
            status, barged_in = "interrupted", not self._closing
            raise
        finally:
            if self.audio_sink is not None and status == "interrupted":
                self.audio_sink.flush()  # before anything that awaits: barge-in silences at once
            elif self.audio_sink is not None:
                self.audio_sink.end()
            if stream is not None:
                await asyncio.shield(stream.close())
            self._replies.append("".join(text))
            self.playback_underruns += stats.playback.underruns
            if status == "interrupted":
                self._playback = None  # the client drops its queued audio
            output = max(0, self._conv.context_tokens - before)
            self.usage["output_tokens"] += output
            timings = stats.as_dict(self._conv.compute_s, self.late_units)
            self.turns.append({"status": status, **timings})
            if barged_in:
                await asyncio.shield(self._send(ResponseListen(response_id, reason="interrupted")))
            await asyncio.shield(self._send_done(response_id, status, output, timings))

    async def _send_done(self, response_id: str, status: str, output: int, timings: dict[str, Any]) -> None:
        u = self.usage
        usage = usage_payload(u["input_tokens"], u["output_tokens"], u["audio_tokens"], u["vision_tokens"])
        response = {"id": response_id, "status": status, "output_tokens": output, "usage": usage}
        await self._send(ResponseDone(response, timings))

    def _chunk_deadline(self, stats: TurnStats, step_s: float) -> float:
        """When the next chunk must start: in time for the listener not to run dry; the first soon after the turn."""
        end_at = stats.playback.end_at
        if end_at is None:
            return stats.speech_end_at + FIRST_CHUNK_SLACK_S
        return end_at - PLAYBACK_GUARD_S - step_s

    @property
    def ahead_of_playback_s(self) -> float:
        """Seconds of reply audio the listener has buffered now, as the server sees it (0 when silent)."""
        return 0.0 if self._playback is None else self._playback.ahead_s(self._clock())

    def _count_input(self, tokens: int, *, audio_s: float, frames: int = 0) -> None:
        self.usage["input_tokens"] += max(0, tokens)
        self.usage["audio_tokens"] += round(audio_s * 27)
        self.usage["vision_tokens"] += 66 * frames

    def _next_conv_id(self) -> str:
        return f"{self.id}.{next(self._conv_index)}"

    @property
    def conversation(self) -> ConversationHandle:
        return self._conv


def describe_engine(info: EngineInfo) -> dict[str, Any]:
    """How `session.created` describes the engine (and warns when replies are noise)."""
    described: dict[str, Any] = {"name": info.name, "model": info.model, "replies_are_noise": info.replies_are_noise}
    if info.replies_are_noise:
        described["notice"] = "Tiny test engine with random weights: its speech and text are noise."
    return described


def _ms(sample_index: int) -> int:
    return sample_index * 1000 // INPUT_SAMPLE_RATE_HZ
