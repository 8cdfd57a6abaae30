"""One call: its turns, its 1-second units, its replies, its limits.

Audio arrives in pieces of any size; silero-vad and `TurnDetector` decide when the user speaks. While
nobody speaks nothing is prefilled (idle seconds must not eat the context): recent audio is kept in a
ring buffer, and when speech starts the `preroll_ms` before its first sample open the turn, so its
first syllable is kept. A long piece goes through the turn logic a VAD window at a time, so a turn
hears the same audio whatever the pieces' size, and pieces that queued up behind a busy loop are
taken together. During a turn every completed 1-second unit (`[audio]`, or `["<unit>", frame,
audio]` in a video call) is prefilled at once, so at the end of the turn only the partial last unit
is left to prefill before `streaming_generate` starts. Every output chunk is sent the moment it exists.

Replies are `Reply` objects (reply.py), one per turn.

Two loops: the input loop runs the VAD and the turn logic on every piece as it arrives, and never
waits for the model; the model loop takes the call's model work (unit prefills, starting a reply,
rolling one back) in order from a queue bounded by the pending-audio limit. So a slow shared model
delays prefills, never the decision that the user has stopped (or started) talking.

Turn ends (session/turn_end.py): `turn.pause_ms` into a silence, the end-of-turn model (Smart Turn) is
asked whether the user has finished; if it is sure, the turn ends then (rule "semantic"), else the
silence window does ("silence"). Sooner, `turn.speculate_pause_ms` into the silence (or at the same
pause), a reply starts speculatively on spare model time, its output held: confirmed, it is released
at once; if the user goes on, it is dropped and the model state rolled back exactly
(engine/rollback.py), the partial unit it started from rejoining the turn's audio. The turn's audio
is cut at the silence's first pause (the speculation's, when there is one), so its reply hears the
same audio whichever rule confirms the turn; Smart Turn still hears everything up to its own pause.
A user who talks again within `resume_window_s` of a confirmed reply becoming audible had only paused:
the reply is withdrawn (`response.cancelled`), rolled back the same way, and the turn goes on.

Barge-in: speech during a reply (or the client's `force_listen`) interrupts it: the reply generator
is abandoned, which the model marks with `<|tts_eos|>` at the next prefill, and the client is told to
drop queued audio. A transport that carries reply audio on a media track sets `audio_sink` before
`run`. A role-play's greeting is not barged into by the first `GREETING_GUARD_S` of sound after it
starts playing (noise, or its own echo, would otherwise cut it before it is heard); `force_listen`
still stops it.

Typed messages (`text_turn`) end the user's turn like speech would: the model gets the text as a user
text turn (its control strings made inert by the engine: engine/text.py) after any audio of the turn, and replies.

The model conversation itself, its usage and its roll-over when the context is full: `CallContext`
(context.py).

Must not import: websockets, aiortc, torch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from omni_server import protocol
from omni_server.engine.base import INPUT_SAMPLE_RATE_HZ, MIN_AUDIO_SAMPLES, EngineInfo
from omni_server.engine.client import ConversationHandle, EngineClient, SpeculativeEngine
from omni_server.errors import OmniError, ProtocolError, SessionEnded
from omni_server.media.smart_turn import SmartTurnModel
from omni_server.protocol import (
    Error,
    ResponseCancelled,
    ResponseCreated,
    ResponseDone,
    Send,
    usage_payload,
)
from omni_server.session import turns
from omni_server.session.call_config import CallConfig
from omni_server.session.context import CallContext
from omni_server.session.lead_in import LeadIn
from omni_server.session.rate import RealTimeBudget
from omni_server.session.reply import FIRST_CHUNK_SLACK_S, AudioSink, Reply, TurnStats
from omni_server.session.turn_end import Hold, Kept, RecentAudio, SemanticJudge, TurnEnd
from omni_server.session.turns import TurnDetector
from omni_server.session.units import PreRoll, UnitCutter, pad_tail
from omni_server.session.vad_feed import VadFeed

logger = logging.getLogger(__name__)

Samples = npt.NDArray[np.float32]
# Scheduling (see docs/capacity.md): every model call carries the time by which it should start.
# A unit is due soon after its last sample arrived: the input loop (and so turn detection) waits on each prefill, and a unit
# costs tens of ms, so it goes ahead of any reply chunk whose listener has more than this buffered.
PREFILL_START_S = 0.2
_CLOSE_CHUNK_WAIT_S = 1.0
_MERGED_SAMPLES = INPUT_SAMPLE_RATE_HZ // 2  # audio waiting in the inbox taken as one piece, at most (0.5 s)
_JUDGED_S = 8  # Smart Turn hears the last 8 s of the turn
_REJOIN_MAX_S = 10.0  # audio kept after a turn's partial unit was cut, to rejoin it if the turn goes on
GREETING_GUARD_S = 1.5  # speech detected this soon after the greeting starts playing does not interrupt it
MAX_PENDING_TEXTS = 4  # typed messages waiting for the call to take them up; more are refused
_TEXT_TOKENS_PER_CHAR = 0.5  # a generous estimate, to keep room in the context before a text prefill


@dataclass(frozen=True)
class _Unit:
    """Model work: prefill a completed 1-s unit."""

    audio: Samples
    arrived: float


@dataclass(frozen=True)
class _StartReply:
    """Model work: prefill the turn's partial last unit (and a typed message), then start the reply
    (held, when speculative)."""

    stats: TurnStats
    tail: Samples | None
    hold: Hold | None
    typed: str | None = None


@dataclass(frozen=True)
class _Rollback:
    """Model work: end the reply and put the conversation back as it was before its partial unit;
    `withdraw`: the reply is the one a continued turn withdraws (it ends with `response.cancelled`)."""

    withdraw: str | None = None


@dataclass(frozen=True)
class _Verdict:
    """Input: the end-of-turn model is sure the user finished in pause number `pause`."""

    pause: int


_Inbound = tuple[Samples, Image.Image | None, float] | str | _Verdict  # what the input loop takes, in order


class CallSession:
    """The state of one call; `run()` drives it until a limit, the client or an error ends it."""

    def __init__(
        self,
        call_id: str,
        worker: EngineClient[Any],
        config: CallConfig,
        send: Send,
        vad: VadFeed,
        *,
        turn_model: SmartTurnModel | None = None,
        lead_in: LeadIn | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.id = call_id
        self._lead_in = lead_in  # the engine's start-up hold of reply audio, shared by its calls (lead_in.py)
        self._worker = worker
        self.config = config
        self._send = send
        self._clock = clock
        self._vad = vad.stream()
        self._turns = TurnDetector(config.turn)
        self._preroll_samples = config.preroll_ms * INPUT_SAMPLE_RATE_HZ // 1000  # kept before speech starts
        # Speech is confirmed `min_speech_ms` after it starts: the ring keeps that much more (see `_opening`).
        confirm_samples = config.turn.min_speech_windows * config.turn.window_samples
        self._preroll = PreRoll(self._preroll_samples + confirm_samples + config.turn.window_samples)
        self._cutter = UnitCutter(INPUT_SAMPLE_RATE_HZ)
        self._inbox: asyncio.Queue[_Inbound] = asyncio.Queue()
        self._received_at = clock()  # when the audio being processed arrived (units are due from then)
        self._pending_samples = 0  # audio in the inbox
        self._work: asyncio.Queue[_Unit | _StartReply | _Rollback] = asyncio.Queue()  # the model loop's
        self._queued_samples = 0  # audio in `_work` (with the inbox, bounded by max_pending_audio_s)
        threshold = config.end_of_turn_threshold
        self._judge = None
        if turn_model is not None and threshold is not None and config.turn.pause_ms is not None:
            useful_s = (config.turn.min_silence_ms - config.turn.pause_ms) / 1000  # then the silence window decides
            self._judge = SemanticJudge(turn_model, threshold, useful_s)
        self._heard = RecentAudio(_JUDGED_S * INPUT_SAMPLE_RATE_HZ)  # what the judge hears
        self._samples_in = 0  # stream position after the newest sample (as the turn detector counts)
        self._turn_start = 0  # stream position of the current turn's first speech
        self._spec_engine = worker if isinstance(worker, SpeculativeEngine) else None
        self._hold: tuple[Hold, TurnStats] | None = None  # a speculative reply waiting for the turn's end
        self._tail: Samples | None = None  # the partial unit the latest reply started from
        self._since_tail: Kept | None = None  # audio after it, while it may still rejoin a turn
        self._checkpoint: tuple[Any, dict[str, int]] | None = None  # (model state, usage) before that tail
        # Speech starting before this stream position continues the turn just ended (audio time, so a
        # client sending faster than real time sees the same turns).
        self._continuable_until: float | None = None
        self._ended_reply_id: str | None = None
        self._paused = False  # the turn's audio was cut at a pause: what follows waits to rejoin it
        self._frame: Image.Image | None = None
        self._in_turn = not config.turn_detection  # manual turn-taking: every sample belongs to a turn
        self.context = CallContext(call_id, worker, config, send, on_fresh=self._forget_conversation, clock=clock)
        self._reply: Reply | None = None  # the latest reply (it may still be playing at the listener)
        self._greeting: Reply | None = None  # the role-play's greeting, guarded at its start
        self._pending_texts = 0
        self._tg: asyncio.TaskGroup | None = None
        self._closing = False
        self.started_at = clock()
        self.turns: list[dict[str, Any]] = []
        self.client_underruns = 0  # as the client's player reports them
        self.audio_sink: AudioSink | None = None  # set before `run` by a transport with an audio track
        self.playback_underruns = 0  # as the server sees them (`Playback`), over all replies
        burst_s = config.input_burst_s
        self._input_budget = None if burst_s is None else RealTimeBudget(burst_s, clock=clock)

    # ---- called by the transport -------------------------------------------------------------------

    def admit_input(self, duration_s: float) -> None:
        """Charge one input message (before decoding it) against the call's real-time budget.

        Raises `rate_limited` when the call sends faster than real time beyond its burst: the message is dropped."""
        if self._input_budget is not None and not self._input_budget.take(duration_s):
            raise ProtocolError(
                "Audio is arriving faster than real time, so this piece was dropped: send audio as it is recorded.",
                code="rate_limited",
            )

    def push_audio(self, samples: Samples, frame: Image.Image | None = None) -> None:
        """Queue 16 kHz float32 audio (with the camera frame sent alongside it, if any).

        Refuses input far ahead of what the model has consumed."""
        limit = int(self.config.max_pending_audio_s * INPUT_SAMPLE_RATE_HZ)
        if self._pending_samples + self._queued_samples + len(samples) > limit:
            raise ProtocolError(
                "Audio is arriving much faster than real time; this piece was dropped.", code="input_overflow"
            )
        self._pending_samples += len(samples)
        self._inbox.put_nowait((samples, frame, self._clock()))

    @property
    def pending_audio_s(self) -> float:
        """Audio received but not yet taken up by the call or the model (the input lag)."""
        return (self._pending_samples + self._queued_samples) / INPUT_SAMPLE_RATE_HZ

    def push_frame(self, image: Image.Image) -> None:
        """Keep only the latest camera frame (for frames arriving apart from audio, as on WebRTC);
        each unit takes the one current when it completes."""
        self._frame = image

    def force_listen(self) -> None:
        self._inbox.put_nowait("force_listen")

    def commit(self) -> None:
        """End the user's turn now (manual turn-taking)."""
        self._inbox.put_nowait("commit")

    def text_turn(self, text: str) -> None:
        """A typed message: it ends the user's turn and is answered like speech. Refuses a flood of them."""
        if self._pending_texts >= MAX_PENDING_TEXTS:
            raise ProtocolError("Messages are arriving faster than the assistant can take them; this one was dropped.")
        self._pending_texts += 1
        self._inbox.put_nowait("text:" + text)

    def close(self, reason: str = "stopped") -> None:
        self._closing = True  # a reply in flight stops after the chunk it is making (see `_reply`)
        self._inbox.put_nowait("close:" + reason)

    # ---- life cycle -------------------------------------------------------------------------------

    async def release(self) -> None:
        """Free the model conversation (for a call that ends before `run`)."""
        await self.context.release()

    async def start(self) -> None:
        """Prefill the system prompt of a fresh conversation; refuse one that leaves no room for a turn."""
        await self.context.start()

    async def run(self) -> str:
        """Serve the call; returns the `session.closed` reason."""
        reason = "stopped"
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                if self.config.greeting:
                    await self._greet(self.config.greeting)
                tg.create_task(self._input_loop(), name=f"{self.id}-input")
                tg.create_task(self._model_loop(), name=f"{self.id}-model")
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
            await self.context.release()
        return reason

    async def _duration_limit(self) -> None:
        await asyncio.sleep(self.config.max_call_s)
        raise SessionEnded("The call reached its maximum duration.", code="max_duration")

    async def _input_loop(self) -> None:
        stash: _Inbound | None = None  # the item after a run of audio pieces taken together
        while True:
            if stash is not None:
                item, stash = stash, None
            elif not self._inbox.empty():
                item = self._inbox.get_nowait()
            else:
                try:
                    async with asyncio.timeout(self.config.idle_timeout_s):
                        item = await self._inbox.get()
                except TimeoutError:
                    raise SessionEnded("No audio arrived for too long.", code="idle_timeout") from None
            if isinstance(item, str):
                await self._control(item)
                continue
            if isinstance(item, _Verdict):
                stopped = self._turns.end_turn(item.pause)  # None: the user has gone on meanwhile
                if stopped is not None and self._in_turn:
                    await self._turn_stopped(stopped)
                continue
            samples, frame, self._received_at = item
            self._pending_samples -= len(samples)
            if frame is not None:
                self._frame = frame
            else:
                samples, stash = self._waiting_audio(samples)
            await self._on_audio(samples)

    def _waiting_audio(self, samples: Samples) -> tuple[Samples, _Inbound | None]:
        """`samples` and the audio pieces already waiting behind it, as one piece (at most `_MERGED_SAMPLES`), and
        the item that ended the run. A call whose input loop fell behind (a busy machine) catches up in
        one VAD round and one pass of the turn logic instead of one per 20 ms piece; turns are cut at
        stream positions, so they are the same. A piece with a camera frame is not merged (each unit
        takes the frame current when it completes), nor is anything else (it waits its turn)."""
        pieces, size = [samples], len(samples)
        while size < _MERGED_SAMPLES and not self._inbox.empty():
            item = self._inbox.get_nowait()
            if not (isinstance(item, tuple) and item[1] is None):
                return _joined(pieces), item
            pieces.append(item[0])
            size += len(item[0])
            self._pending_samples -= len(item[0])
        return _joined(pieces), None

    async def _model_loop(self) -> None:
        """The call's model work, in order; the input loop queues it and never waits for it."""
        while True:
            work = await self._work.get()
            if isinstance(work, _Unit):
                await self._prefill_unit(work.audio, arrived=work.arrived)
                self._queued_samples -= len(work.audio)
            elif isinstance(work, _StartReply):
                await self._start_reply(work)
            else:
                await self._rollback(work.withdraw)

    async def _control(self, command: str) -> None:
        if command == "force_listen":
            self._stop_reply()
        elif command == "commit":
            if self._in_turn or self._cutter.pending_samples:
                await self._end_turn(TurnEnd("commit", 0.0))
        elif command.startswith("text:"):
            self._pending_texts -= 1
            await self._end_turn(TurnEnd("text", 0.0), typed=command.removeprefix("text:"))
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
            self._heard.push(samples)
            self._samples_in += len(samples)
            self._queue_audio(samples)
            return
        probs = await self._vad.feed(samples)  # batched with every other call's windows, off the loop
        window = self.config.turn.window_samples
        if len(samples) <= window:
            await self._on_piece(samples, probs)
            return
        # A long piece goes through the turn logic a VAD window at a time, so that what happens inside it
        # (speech starting, a pause cutting the turn) cuts its audio where it happened, not at its end.
        done = 0
        first = (self._turns.windows_seen + 1) * window - self._samples_in  # where its first window ends
        for k in range(len(probs)):
            end = first + k * window
            await self._on_piece(samples[done:end], probs[k : k + 1])
            done = end
        if done < len(samples):
            await self._on_piece(samples[done:], probs[:0])

    async def _on_piece(self, samples: Samples, probs: npt.NDArray[np.float32]) -> None:
        """Audio and the VAD's probabilities for the windows it completes: the turn logic, and where it goes."""
        self._heard.push(samples)
        self._samples_in += len(samples)
        events = self._turns.feed(probs)
        was_in_turn, fed = self._in_turn, False
        if not self._in_turn:
            self._keep_for_rejoin(samples)
        for event in events:
            if isinstance(event, turns.SpeechStarted) and not self._in_turn:
                if self._replying() and not self.config.barge_in:
                    continue  # the user talks over the reply, and this call does not allow barge-in
                if self._greeting_guarded():
                    continue  # a sound as the greeting starts (noise, its own echo) does not cut it short
                self._in_turn, fed = True, True
                self._turn_start = event.sample_index
                self._expect_work(True)
                if self._continuable(event.sample_index):
                    await self._continue_turn(event)
                    continue
                self._stop_reply()
                self._continuable_until, self._since_tail = None, None
                await self._send(protocol.SpeechStarted(audio_start_ms=_ms(event.sample_index)))
                self._queue_audio(self._opening(samples, event.sample_index))
            elif isinstance(event, turns.SpeechPaused) and self._in_turn:
                self._on_pause(event)
            elif isinstance(event, turns.SpeechResumed) and self._in_turn and self._paused:
                self._go_on()
            elif isinstance(event, turns.SpeechStopped) and self._in_turn:
                await self._turn_stopped(event)
        if self._in_turn and not fed:
            self._queue_audio(samples)
        elif was_in_turn and not self._in_turn:
            self._keep_for_rejoin(samples)
        elif not self._in_turn:
            self._preroll.push(samples)

    def _opening(self, samples: Samples, speech_start: int) -> Samples:
        """A turn's first audio: `preroll_ms` before the speech's first sample, and the rest of the piece in
        which the VAD confirmed it. Cut at stream positions, so every piece size gives the same turn: a
        long piece (an SDK client's 1-s or 5-s appends) used to go whole into the pre-roll ring, which
        kept only its last `preroll_ms`, and the speech before that was lost."""
        before = self._preroll.take()  # what came before this piece
        start = self._samples_in - len(samples) - len(before)  # stream position of `before`'s first sample
        keep_from = max(start, speech_start - self._preroll_samples)
        return np.concatenate([before, samples])[keep_from - start :]

    def _queue_audio(self, samples: Samples) -> None:
        """The turn's audio: into units for the model, or, while a speculation is held, kept to rejoin."""
        if self._paused:  # cut at the pause: kept to rejoin the turn if it goes on
            self._keep_for_rejoin(samples)
            return
        for unit in self._cutter.feed(samples):
            self._queued_samples += len(unit)
            self._work.put_nowait(_Unit(unit, self._received_at))

    def _keep_for_rejoin(self, samples: Samples) -> None:
        kept = self._since_tail
        if kept is None:
            return
        if not kept.add(samples):
            self._since_tail, self._continuable_until = None, None  # too late to rejoin: keep nothing

    def _kept(self) -> Kept:
        return Kept(int(_REJOIN_MAX_S * INPUT_SAMPLE_RATE_HZ))

    def _rejoin(self) -> None:
        """The cut partial unit and the audio after it go back to the unit cutter, as if never cut."""
        pieces = [self._tail] if self._tail is not None else []
        pieces += self._since_tail.pieces if self._since_tail is not None else []
        self._tail, self._since_tail = None, None
        for piece in pieces:
            self._queue_audio(piece)

    def _on_pause(self, event: turns.SpeechPaused) -> None:
        """The user may have finished: ask the end-of-turn model, or start the reply speculatively, or both."""
        assert self._tg is not None
        if event.judge and self._judge is not None:
            pre_speech = self.config.preroll_ms * INPUT_SAMPLE_RATE_HZ // 1000  # as Smart Turn was trained
            heard = self._heard.last(self._samples_in - self._turn_start + pre_speech)
            judging = self._judge_pause(event.pause, heard)
            try:
                self._tg.create_task(judging, name=f"{self.id}-judge")
            except RuntimeError:  # the call is ending (its task group takes no new work): nothing to judge
                judging.close()
        # The turn's audio ends at the silence's first pause if the turn does, speculation or not: a reply
        # hears the same turn whether it was speculated (and whenever the decision comes); the rest waits
        # to rejoin. (A later pause in the same silence, the judge's, leaves the cut where it is.)
        if not self._paused:
            self._paused = True
            self._tail, self._since_tail = self._cutter.flush(), self._kept()
        if not (event.speculate and self._may_speculate()):
            return
        stats = TurnStats(compute_start_s=self.conversation.compute_s)
        hold = Hold(response_id=self._next_response_id(), started_at=self._clock())
        stats.speculation = hold
        self._hold = (hold, stats)
        self._work.put_nowait(_StartReply(stats, self._tail, hold))

    async def _judge_pause(self, pause: int, heard: Samples) -> None:
        assert self._judge is not None
        try:
            finished = await self._judge.finished(heard)
        except RuntimeError:  # onnxruntime's errors: the silence window decides this turn
            logger.exception("end-of-turn model failed", extra={"session_id": self.id})
            return
        if finished:
            self._inbox.put_nowait(_Verdict(pause))  # decided in order with the audio (see `_input_loop`)

    def _may_speculate(self) -> bool:
        if not (self.config.speculate and self._spec_engine is not None) or self._hold is not None:
            return False
        if self._replying():
            return False
        reserve = self.config.max_new_tokens + 32  # no roll-over may fall between a checkpoint and its use
        return (
            self.conversation.context_tokens + 2 * self.context.unit_tokens + reserve <= self.config.max_context_tokens
        )

    def _go_on(self) -> None:
        """The user went on after a pause: a held reply is rolled back, the turn's audio rejoins the cutter."""
        self._paused = False
        if self._hold is not None:
            hold, _ = self._hold
            hold.dropped = True
            self._hold = None
            self._work.put_nowait(_Rollback())
        self._rejoin()

    async def _turn_stopped(self, event: turns.SpeechStopped) -> None:
        await self._send(protocol.SpeechStopped(audio_end_ms=_ms(event.sample_index)))
        after_ms = (event.decided_at - event.sample_index) * 1000 / INPUT_SAMPLE_RATE_HZ
        await self._end_turn(TurnEnd(event.rule, after_ms))

    async def _end_turn(self, end: TurnEnd, typed: str | None = None) -> None:
        """End the user's turn (with a typed message, if any) and start the reply."""
        self._in_turn = not self.config.turn_detection
        self._expect_work(False)
        now = self._clock()
        window = self.config.resume_window_s if self._spec_engine is not None else 0.0
        # A typed message is deliberate: speech after it starts a new turn, it never continues this one.
        continuable = window > 0 and self.config.turn_detection and typed is None
        self._continuable_until = float("inf") if continuable else None
        self._ended_reply_id = self._next_response_id()  # the reply a continued turn would withdraw
        paused, self._paused = self._paused, False
        if self._hold is not None and typed is not None:  # the held reply never heard the message
            hold, _ = self._hold
            hold.dropped = True
            self._hold = None
            self._work.put_nowait(_Rollback())
        if self._hold is not None:  # the speculative reply is the answer: out with what it holds
            hold, stats = self._hold
            self._hold = None
            stats.speech_end_at, stats.end = now, end
            stats.reply_start_at = max(stats.reply_start_at, now)
            await self._send(ResponseCreated(hold.response_id))
            hold.release(now, now + FIRST_CHUNK_SLACK_S)
            return
        self._stop_reply()  # manual turns: a commit during a reply replaces it (one reply at a time)
        stats = TurnStats(speech_end_at=now, compute_start_s=self.conversation.compute_s, end=end)
        if not paused:  # (after a pause the turn's audio was cut there already)
            self._tail, self._since_tail = self._cutter.flush(), self._kept()
        if self._continuable_until is None:
            self._since_tail = None
        self._work.put_nowait(_StartReply(stats, self._tail, None, typed))

    def _continuable(self, sample_index: int) -> bool:
        until = self._continuable_until
        return until is not None and sample_index < until and self._since_tail is not None

    async def _continue_turn(self, event: turns.SpeechStarted) -> None:
        """Speech right after a reply began: the user had only paused. Withdraw the reply, go on with the turn."""
        self._continuable_until = None
        self._preroll.clear()  # its audio is in `_since_tail` already
        reply = self._reply
        if reply is None or reply.response_id != self._ended_reply_id:
            pass  # this turn's reply has not started yet: the model loop withdraws it when it has
        elif reply.active:
            reply.cancel("user_continued")
        else:  # it had finished: withdraw what the client has of it
            if self.audio_sink is not None:
                self.audio_sink.flush()
            await self._send(ResponseCancelled(reply.response_id, reason="user_continued"))
            if reply.status == "completed" and self.context.recent_replies:
                self.context.recent_replies.pop()  # (the usage counters go back with the model state)
        await self._send(protocol.SpeechStarted(audio_start_ms=_ms(event.sample_index)))
        self._work.put_nowait(_Rollback(withdraw="user_continued"))
        self._rejoin()

    def _expect_work(self, speaking: bool) -> None:
        """While the user speaks, their reply may be due soon after any moment: other calls must not
        start speculations that would hold the model longer than that."""
        if self._spec_engine is not None:
            self._spec_engine.expect_work(self.conversation, FIRST_CHUNK_SLACK_S if speaking else None)

    async def _start_reply(self, work: _StartReply) -> None:
        """Model loop: checkpoint (when the reply may be rolled back), prefill the tail, start the reply."""
        await self._interrupt()
        self._checkpoint = None
        if work.hold is not None and work.hold.dropped:
            return  # the user went on before it started: nothing to undo
        await self.context.make_room(len(work.typed or "") * _TEXT_TOKENS_PER_CHAR)
        stats = work.stats
        if self._spec_engine is not None and (work.hold is not None or self._continuable_until is not None):
            self._checkpoint = (await self._spec_engine.checkpoint(self.conversation), dict(self.context.usage))
        if work.tail is not None:  # the reply waits on it; padded if shorter than the model takes (pad_tail)
            arrived = self._clock() if work.hold is not None else stats.speech_end_at
            tail = pad_tail(work.tail, MIN_AUDIO_SAMPLES)
            await self._prefill_unit(tail, arrived=arrived, bound_s=0.0, make_room=False)
        if work.typed is not None:
            await self.context.prefill_text(work.typed)
        stats.reply_start_at = self._clock()
        self._launch_reply(stats, work.hold)

    async def _rollback(self, withdraw: str | None) -> None:
        """Model loop: the reply ends (unsent if held) and the conversation is as before its partial unit."""
        if withdraw is not None and self._reply is not None and self._reply.response_id == self._ended_reply_id:
            self._reply.cancel(withdraw)
        await self._interrupt()
        if self._checkpoint is None or self._spec_engine is None:
            return
        state, usage = self._checkpoint
        self._checkpoint = None
        await self._spec_engine.rollback(self.conversation, state)
        self.context.usage = usage

    async def _greet(self, greeting: str) -> None:
        """Start a reply to a text turn asking for the greeting; the user can talk over it as over any reply."""
        await self.context.prefill_greeting(greeting)
        now = self._clock()
        self._launch_reply(
            TurnStats(speech_end_at=now, reply_start_at=now, compute_start_s=self.conversation.compute_s)
        )
        self._greeting = self._reply

    def _greeting_guarded(self) -> bool:
        """The greeting is the reply in hand and has not played `GREETING_GUARD_S` yet (or not begun)."""
        greeting = self._greeting
        if greeting is None or greeting is not self._reply or greeting.status != "completed":
            return False
        started = greeting.stats.first_audio_at
        return started is None or self._clock() - started < GREETING_GUARD_S

    def _replying(self) -> bool:
        return self._reply is not None and self._reply.active

    def _stop_reply(self) -> None:
        """Barge-in without waiting for the model: the reply is silenced and cancelled now (it says
        `response.listen` before its `response.done`); the model loop waits for it before its next work."""
        if self._reply is not None:
            self._reply.cancel()

    async def _interrupt(self) -> None:
        """Barge-in: stop the reply within one chunk and tell the client to drop queued audio."""
        if self._reply is not None:
            await self._reply.interrupt()

    # ---- model calls ------------------------------------------------------------------------------

    async def _prefill_unit(
        self, audio: Samples, *, arrived: float, bound_s: float = PREFILL_START_S, make_room: bool = True
    ) -> None:
        # Manual turns: input during a reply talks over it. A prefill must never run under a live reply
        # generator (it could not be resumed afterwards), so the reply ends first.
        await self._interrupt()
        if make_room:
            await self.context.make_room()
        frame = self._frame if self.config.video else None
        await self.context.prefill_unit(audio, frame, arrived=arrived, bound_s=bound_s)

    def _forget_conversation(self) -> None:
        """A roll-over replaced the model conversation: nothing kept of the old one can be rolled back to."""
        self._checkpoint, self._continuable_until = None, None

    def _next_response_id(self) -> str:
        return f"resp_{len(self.turns) + 1}"

    def _launch_reply(self, stats: TurnStats, hold: Hold | None = None) -> None:
        """Start the reply to the turn that just ended (one reply at a time: the last one has ended)."""
        cfg = self.config
        gen_kwargs: dict[str, Any] = {"max_new_tokens": cfg.max_new_tokens, "generate_audio": cfg.tts_enabled}
        if cfg.min_new_tokens:
            gen_kwargs["min_new_tokens"] = cfg.min_new_tokens
        if cfg.temperature is not None:
            gen_kwargs["temperature"] = cfg.temperature
        rid = hold.response_id if hold is not None else self._next_response_id()
        reply = Reply(
            rid,
            stats,
            send=self._send,
            sink=self.audio_sink,
            lead_in=self._lead_in,
            clock=self._clock,
            hold=hold,
            on_first_audio=self._heard_at,
        )
        assert self._tg is not None
        reply.start(
            self._tg,
            self._worker,
            self.conversation,
            gen_kwargs,
            closing=lambda: self._closing,
            on_done=self._reply_done,
        )
        self._reply = reply

    def _heard_at(self, now: float) -> None:
        """The reply's first audio went out: the user may still go on with their turn, for a moment."""
        if self._continuable_until is not None:
            self._continuable_until = self._samples_in + self.config.resume_window_s * INPUT_SAMPLE_RATE_HZ

    async def _reply_done(self, reply: Reply) -> None:
        """Keep what the reply added to the call, and say `response.done`."""
        self.playback_underruns += reply.playback.underruns
        if reply.status == "cancelled":  # rolled back: neither the context nor the call's memory keeps it
            reply.output_tokens = 0
        else:
            self.context.recent_replies.append("".join(reply.text))
        self.context.usage["output_tokens"] += reply.output_tokens
        timings = reply.stats.as_dict(self.conversation.compute_s, self.context.late_units)
        self.turns.append({"status": reply.status, **timings})
        u = self.context.usage
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

    @property
    def conversation(self) -> ConversationHandle:
        return self.context.handle

    @property
    def usage(self) -> dict[str, int]:
        """Tokens the call has put into the model and had out of it, by kind."""
        return self.context.usage

    @property
    def late_units(self) -> int:
        return self.context.late_units


def describe_engine(info: EngineInfo) -> dict[str, Any]:
    """How `session.created` describes the engine (and warns when replies are noise)."""
    described: dict[str, Any] = {"name": info.name, "model": info.model, "replies_are_noise": info.replies_are_noise}
    if info.replies_are_noise:
        described["notice"] = "Tiny test engine with random weights: its speech and text are noise."
    return described


def _ms(sample_index: int) -> int:
    return sample_index * 1000 // INPUT_SAMPLE_RATE_HZ


def _joined(pieces: list[Samples]) -> Samples:
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
