"""One call: its turns, its 1-second units, its replies, its limits.

Audio arrives in pieces of any size; silero-vad and `TurnDetector` decide when the user speaks. While
nobody speaks nothing is prefilled (idle seconds must not eat the context): the last `preroll_ms` of
audio are kept in a ring buffer, and when speech starts they open the turn, so its first syllable is
kept. During a turn every completed 1-second unit (`[audio]`, or `["<unit>", frame, audio]` in a video
call) is prefilled at once, so at the end of the turn only the partial last unit is left to prefill
before `streaming_generate` starts. Every output chunk is sent the moment it exists.

Replies are `Reply` objects (reply.py), one per turn. Barge-in: speech during a reply (or the
client's `force_listen`) interrupts it: the reply generator is abandoned, which the model marks with
`<|tts_eos|>` at the next prefill, and the client is told to drop queued audio. A transport that
carries reply audio on a media track sets `audio_sink` before `run`.

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
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from omni_server import protocol
from omni_server.engine.base import INPUT_SAMPLE_RATE_HZ, MIN_AUDIO_SAMPLES, EngineInfo
from omni_server.engine.client import ConversationHandle, EngineClient
from omni_server.engine.placeholders import audio_tokens, image_tokens
from omni_server.errors import OmniError, ProtocolError, SessionEnded
from omni_server.media.vad import SileroVadModel, VadStream
from omni_server.protocol import (
    ConversationTruncated,
    Error,
    ResponseDone,
    Send,
    usage_payload,
)
from omni_server.session.reply import AudioSink, Reply, TurnStats
from omni_server.session.turns import SpeechStarted, SpeechStopped, TurnConfig, TurnDetector
from omni_server.session.units import PreRoll, UnitCutter, pad_tail

logger = logging.getLogger(__name__)

Samples = npt.NDArray[np.float32]
# Scheduling (see docs/capacity.md): every model call carries the time by which it should start.
PREFILL_BOUND_S = 1.0  # a unit prefilled later than this after its last sample arrived counts as late
# ... but is due much sooner: the input loop (and so turn detection) waits on each prefill, and a unit
# costs tens of ms, so it goes ahead of any reply chunk whose listener has more than this buffered.
PREFILL_START_S = 0.2
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
        self._reply: Reply | None = None  # the latest reply (it may still be playing at the listener)
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
            if self._reply is not None:
                # The reply ends after the chunk being made; a chunk still queued behind other calls'
                # more urgent work is not waited for (it could be seconds away), so the reply is dropped then.
                await self._reply.wait(_CLOSE_CHUNK_WAIT_S)
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
        if tail is not None:  # padded when shorter than the model can take (units.pad_tail says why)
            tail = pad_tail(tail, MIN_AUDIO_SAMPLES)
            await self._prefill_unit(tail, arrived=stats.speech_end_at, bound_s=0.0)  # the reply waits on it
        stats.reply_start_at = self._clock()
        self._start_reply(stats)

    async def _greet(self, greeting: str) -> None:
        """Start a reply to a text turn asking for the greeting; the user can talk over it as over any reply."""
        prompt = _GREETING[self.config.language].format(greeting=greeting)
        before = self._conv.context_tokens
        after = await self._worker.prefill(self._conv, [{"role": "user", "content": [prompt]}])
        self._count_input(after - before)
        now = self._clock()
        self._start_reply(TurnStats(speech_end_at=now, reply_start_at=now, compute_start_s=self._conv.compute_s))

    def _replying(self) -> bool:
        return self._reply is not None and self._reply.active

    async def _interrupt(self) -> None:
        """Barge-in: stop the reply within one chunk and tell the client to drop queued audio."""
        if self._reply is not None:
            await self._reply.interrupt()

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
        self._count_input(after - before, audio=0 if ref is None else audio_tokens(len(ref)))

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
        vision = 0 if frame is None else image_tokens(*frame.size, self.config.max_slice_nums)
        self._count_input(added, audio=audio_tokens(len(audio)), vision=vision)

    async def _roll_over(self) -> None:
        dropped = self._conv.context_tokens
        await self._worker.release(self._conv)
        self._conv = self._worker.open(self._next_conv_id())
        recent = " ".join(self._replies)[-600:]
        note = _MEMORY_NOTE[self.config.language].format(text=recent) if recent else None
        await self._prefill_system_prompt(note)
        logger.info("context rolled over", extra={"session_id": self.id, "dropped_tokens": dropped})
        await self._send(ConversationTruncated(reason="context_full", dropped_tokens=dropped))

    def _start_reply(self, stats: TurnStats) -> None:
        """Start the reply to the turn that just ended (one reply at a time: the last one has ended)."""
        cfg = self.config
        gen_kwargs: dict[str, Any] = {"max_new_tokens": cfg.max_new_tokens, "generate_audio": cfg.tts_enabled}
        if cfg.min_new_tokens:
            gen_kwargs["min_new_tokens"] = cfg.min_new_tokens
        if cfg.temperature is not None:
            gen_kwargs["temperature"] = cfg.temperature
        reply = Reply(f"resp_{len(self.turns) + 1}", stats, send=self._send, sink=self.audio_sink, clock=self._clock)
        assert self._tg is not None
        reply.start(
            self._tg, self._worker, self._conv, gen_kwargs, closing=lambda: self._closing, on_done=self._reply_done
        )
        self._reply = reply

    async def _reply_done(self, reply: Reply) -> None:
        """Keep what the reply added to the call, and say `response.done`."""
        self._replies.append("".join(reply.text))
        self.playback_underruns += reply.playback.underruns
        self.usage["output_tokens"] += reply.output_tokens
        timings = reply.stats.as_dict(self._conv.compute_s, self.late_units)
        self.turns.append({"status": reply.status, **timings})
        u = self.usage
        usage = usage_payload(u["input_tokens"], u["output_tokens"], u["audio_tokens"], u["vision_tokens"])
        response = {
            "id": reply.response_id,
            "status": reply.status,
            "output_tokens": reply.output_tokens,
            "usage": usage,
        }
        if reply.failure is not None:
            response["reason"] = reply.failure
        await self._send(ResponseDone(response, timings))

    @property
    def ahead_of_playback_s(self) -> float:
        """Seconds of reply audio the listener has buffered now, as the server sees it (0 when silent)."""
        return 0.0 if self._reply is None else self._reply.ahead_s(self._clock())

    def _count_input(self, tokens: int, *, audio: int = 0, vision: int = 0) -> None:
        """Count a prefill: `tokens` the context grew by, of which `audio` and `vision` are the placeholders the
        model's processor made (engine/placeholders.py; a sliced 640×480 frame is 198); never more than grew."""
        tokens = max(0, tokens)
        audio = min(audio, tokens)
        self.usage["input_tokens"] += tokens
        self.usage["audio_tokens"] += audio
        self.usage["vision_tokens"] += min(vision, tokens - audio)

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
