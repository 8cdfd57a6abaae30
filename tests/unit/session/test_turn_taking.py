"""Turn ends and speculation in a real `CallSession`: decisions on arrival, semantic ends, exact rollback.

Every call runs silero-vad, Smart Turn, the unit cutter and the engine worker on the tiny engine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from omni_server.engine.cost import EngineCost
from omni_server.engine.tiny import build_tiny_engine
from omni_server.engine.worker import EngineWorker
from omni_server.media.smart_turn import SmartTurnModel
from omni_server.media.vad import SileroVadModel
from omni_server.protocol import ServerEvent
from omni_server.session.call_config import CallConfig
from omni_server.session.reply import SPECULATION_AHEAD_S
from omni_server.session.session import CallSession
from omni_server.session.turns import SpeechPaused, SpeechResumed, SpeechStarted, TurnConfig, TurnDetector
from omni_server.session.vad_feed import VadFeed
from tests import speech
from tests.conftest import timeout

Samples = npt.NDArray[np.float32]
PIECE = 1600  # 0.1 s, as a client sends it
FRAME = 320  # 20 ms, as WebRTC sends it
TODAY_SILENCE_MS = 500  # the silence that ended every turn before the end-of-turn model


@pytest.fixture(scope="module")
def vad_model() -> SileroVadModel:
    return SileroVadModel()


@pytest.fixture(scope="module")
def turn_model() -> SmartTurnModel:
    return SmartTurnModel()


@pytest.fixture
async def worker() -> AsyncIterator[EngineWorker]:
    w = EngineWorker(build_tiny_engine(seed=5))
    yield w
    w.close()


def paused(speech_dir: Path, language: str, *, pause_s: float = 0.6) -> Samples:
    """'I would like to… [pause] …book a table for two tonight.' (or the Chinese fixture)."""
    path = speech_dir / f"paused-{language}-{pause_s}.wav"
    return speech.load_f32(
        speech.make_paused_speech_wav(speech.PAUSED[language], path, language=language, pause_s=pause_s)
    )


def whole(speech_dir: Path, language: str) -> Samples:
    """The same words said in one go."""
    first, rest = speech.PAUSED[language]
    text = f"{first} {rest}" if language == "en" else first + rest
    return speech.load_f32(
        speech.make_paused_speech_wav((text,), speech_dir / f"whole-{language}.wav", language=language)
    )


@dataclass
class Recorder:
    """A call's `send`: its events, when each arrived, and a way to wait for them."""

    events: list[tuple[str, dict[str, Any], float]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def send(self, event: ServerEvent) -> None:
        self.events.append((event.type, event.wire(), time.monotonic()))
        self.changed.set()

    def of(self, event_type: str) -> list[dict[str, Any]]:
        return [f for t, f, _ in self.events if t == event_type]

    def types(self) -> list[str]:
        return [t for t, _, _ in self.events]

    async def until(self, event_type: str, count: int = 1, seconds: float = 30) -> dict[str, Any]:
        async with asyncio.timeout(timeout(seconds)):
            while len(self.of(event_type)) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.of(event_type)[count - 1]

    def replies(self) -> list[tuple[str, str, bytes]]:
        """(status, text, audio bytes) of every reply the client was told was done."""
        text: dict[str, list[str]] = {}
        audio: dict[str, list[bytes]] = {}
        out = []
        for t, f, _ in self.events:
            if t == "response.output_text.delta":
                text.setdefault(f["response_id"], []).append(f["text"])
            elif t == "response.output_audio.delta":
                audio.setdefault(f["response_id"], []).append(f["audio"].encode())
            elif t == "response.done":
                rid = f["response"]["id"]
                out.append((f["response"]["status"], "".join(text.get(rid, [])), b"".join(audio.get(rid, []))))
        return out


class ListeningJudge(SmartTurnModel):
    """Smart Turn's stand-in: remembers how much audio it was asked about, and is never sure."""

    def __init__(self) -> None:  # no model to load
        self.heard: list[int] = []

    def complete_probability(self, audio: npt.ArrayLike, *, crowded: bool = False) -> float:
        self.heard.append(len(np.asarray(audio)))
        return 0.0


def config(**kw: Any) -> CallConfig:
    """A call's config; the speculation's pause is the judge's (`pause_ms`) unless `speculate_pause_ms` says."""
    pause_ms = kw.pop("pause_ms", 200)
    speculate_pause_ms = kw.pop("speculate_pause_ms", pause_ms)
    turn = TurnConfig(
        min_silence_ms=kw.pop("silence_ms", 800), pause_ms=pause_ms, speculate_pause_ms=speculate_pause_ms
    )
    return CallConfig(turn=turn, **kw)


async def push_realtime(session: CallSession, audio: Samples) -> None:
    """Audio paced as a microphone sends it: one 0.1 s piece every 0.1 s."""
    start = time.monotonic()
    for n, i in enumerate(range(0, len(audio), PIECE)):
        session.push_audio(audio[i : i + PIECE])
        await asyncio.sleep(max(0.0, start + (n + 1) * PIECE / 16_000 - time.monotonic()))


def push_at_once(session: CallSession, audio: Samples, piece: int = PIECE) -> None:
    for i in range(0, len(audio), piece):
        session.push_audio(audio[i : i + piece])


async def call(
    worker: EngineWorker,
    vad_feed: VadFeed,
    turns: Sequence[Samples],
    cfg: CallConfig,
    *,
    turn_model: SmartTurnModel | None = None,
    realtime: bool = False,
    call_id: str = "call",
    piece: int = PIECE,
) -> tuple[Recorder, CallSession]:
    """One call, each turn followed by 1.5 s of silence and spoken once the previous reply is done."""
    recorder = Recorder()
    session = CallSession(call_id, worker, cfg, recorder.send, vad_feed, turn_model=turn_model)
    await session.start()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(session.run())
        for n, audio in enumerate(turns, 1):
            audio = np.concatenate([audio, np.zeros(24_000, np.float32)])
            if realtime:
                await push_realtime(session, audio)
            else:
                push_at_once(session, audio, piece)
            await recorder.until("response.done", n)
        session.close()
    return recorder, session


# ---- §2: turn decisions never wait on the model ----------------------------------------------------------


async def test_the_turn_ends_on_time_behind_a_slow_model(vad_feed: VadFeed, question: Samples) -> None:
    """With every 1-s prefill taking 1.5 s, speech_stopped still comes as soon as the audio says so."""
    slow = EngineWorker(build_tiny_engine(seed=5, cost=EngineCost(prefill_s_per_unit=1.5)))
    try:
        recorder = Recorder()
        session = CallSession("slow", slow, config(silence_ms=500, pause_ms=None), recorder.send, vad_feed)
        await session.start()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(session.run())
            audio = np.concatenate([question, np.zeros(16_000, np.float32)])
            pushed = time.monotonic()
            push_at_once(session, audio)  # 4.4 s of audio: three unit prefills, 4.5 s of model time
            await recorder.until("input.speech_stopped")
            decided = [at for t, _, at in recorder.events if t == "input.speech_stopped"][0]
            assert decided - pushed < 1.0  # the prefills are still running
            assert session.pending_audio_s > 0.9  # at least one unit still waits for the model
            done = await recorder.until("response.done", seconds=60)
            session.close()
        assert done["timings"]["turn_rule"] == "silence"
    finally:
        slow.close()


# ---- §3: semantic ends ------------------------------------------------------------------------------------


@pytest.mark.parametrize("language", ["en", "zh"])
async def test_a_finished_sentence_ends_sooner_than_the_silence_window(
    worker: EngineWorker, vad_feed: VadFeed, turn_model: SmartTurnModel, speech_dir: Path, language: str
) -> None:
    """A sentence that sounds finished ends on Smart Turn's word, in the 300 ms of silence heard so far
    (the model's own latency is left out by waiting for it: benchmarks measure that)."""
    recorder = Recorder()
    cfg = config(silence_ms=TODAY_SILENCE_MS, end_of_turn_threshold=0.5)
    session = CallSession("call", worker, cfg, recorder.send, vad_feed, turn_model=turn_model)
    await session.start()
    sentence = whole(speech_dir, language)[:-8_000]  # without the fixture's trailing silence
    async with asyncio.TaskGroup() as tg:
        tg.create_task(session.run())
        push_at_once(session, np.concatenate([sentence, np.zeros(4_800, np.float32)]))
        await recorder.until("input.speech_stopped", seconds=10)
        push_at_once(session, np.zeros(16_000, np.float32))
        timings = (await recorder.until("response.done"))["timings"]
        session.close()
    assert timings["turn_rule"] == "semantic"
    assert timings["speech_end_to_decision_ms"] < TODAY_SILENCE_MS


@pytest.mark.parametrize("language", ["en", "zh"])
async def test_a_pause_mid_sentence_is_not_answered(
    worker: EngineWorker, vad_feed: VadFeed, turn_model: SmartTurnModel, speech_dir: Path, language: str
) -> None:
    """'I would like to… [600 ms] …book a table': one turn, one reply, after the whole sentence."""
    recorder, _ = await call(
        worker, vad_feed, [paused(speech_dir, language)], config(end_of_turn_threshold=0.5, speculate=True),
        turn_model=turn_model, realtime=True,
    )  # fmt: skip
    assert recorder.types().count("input.speech_stopped") == 1
    assert recorder.types().count("response.created") == 1
    stopped = recorder.of("input.speech_stopped")[0]["audio_end_ms"]
    assert stopped > (0.5 + 1.5) * 1000  # after the second part began (0.5 s lead-in, > 1 s of first part)


# ---- §4: speculation and exact rollback -------------------------------------------------------------------


async def committed(
    worker: EngineWorker,
    vad_feed: VadFeed,
    turns: Sequence[Samples],
    cfg: CallConfig,
    *,
    realtime: bool,
    piece: int = PIECE,
) -> tuple[Recorder, CallSession]:
    """One call whose turns the client ends itself (`input.commit`) right after the speech, so every run
    cuts its last partial unit at the same sample."""
    recorder = Recorder()
    session = CallSession("same", worker, cfg, recorder.send, vad_feed)
    await session.start()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(session.run())
        for audio in turns:
            audio = audio[:-8_000]  # the speech, up to its last sample
            if realtime:
                await push_realtime(session, audio)
            else:
                push_at_once(session, audio, piece)
            done = len(recorder.of("response.done"))  # a reply withdrawn meanwhile has said its done
            session.commit()
            await recorder.until("response.done", done + 1)
            push_at_once(session, np.zeros(8_000, np.float32))
        session.close()
    return recorder, session


async def test_discarded_speculations_change_nothing(
    worker: EngineWorker, vad_feed: VadFeed, speech_dir: Path, question: Samples
) -> None:
    """Replies after discarded speculations are token for token those without, with the same KV length."""
    outcomes: list[str] = []
    worker.on_speculation = outcomes.append
    turns = [paused(speech_dir, "en"), paused(speech_dir, "zh", pause_s=0.8)]
    plain, plain_session = await committed(worker, vad_feed, turns, config(speculate=False), realtime=False)
    spec, spec_session = await committed(worker, vad_feed, turns, config(speculate=True), realtime=True)
    assert outcomes.count("started") == outcomes.count("discarded") >= 1  # pauses inside sentences
    assert [r[0] for r in spec.replies()] == ["completed"] * 2
    assert spec.replies() == plain.replies()
    assert spec_session.conversation.context_tokens == plain_session.conversation.context_tokens
    assert spec_session.usage == plain_session.usage


async def test_a_confirmed_speculation_is_released_at_once(
    worker: EngineWorker, vad_feed: VadFeed, question: Samples
) -> None:
    """The speculated reply goes out when the turn is confirmed: its first chunk was ready by then. Until
    then it made about a second of speech and waited; confirmed, it went on to its end."""
    # 1.3 s for the speculation, even on a loaded machine; a reply of several seconds
    cfg = config(speculate=True, silence_ms=1500, min_new_tokens=100)
    recorder, _ = await call(worker, vad_feed, [question], cfg, realtime=True)
    timings = recorder.of("response.done")[0]["timings"]
    assert timings["speculative"] and timings["first_chunk_ready_at_decision"]
    ready_s = timings["audio_ready_at_decision_ms"] / 1000  # the whole reply, were it not bounded
    assert SPECULATION_AHEAD_S <= ready_s < SPECULATION_AHEAD_S + 0.54  # a TTS step: at most 0.533 s
    assert timings["audio_s"] > ready_s + 1  # and went on once confirmed
    assert timings["speculation_lead_ms"] > 1000
    assert timings["turn_rule"] == "silence" and timings["end_of_turn_to_first_audio_ms"] < 200
    types = recorder.types()
    assert types.index("input.speech_stopped") < types.index("response.created")


async def test_the_speculation_starts_at_its_own_pause_before_smart_turn_is_asked(
    worker: EngineWorker, vad_feed: VadFeed, question: Samples
) -> None:
    """Speculating 100 ms into the silence and judging at 200 ms: the reply hears the turn cut at 100 ms
    (as when both are at 100 ms), Smart Turn hears all of it up to 200 ms (as when both are at 200 ms)."""
    runs = {}
    for speculate_ms, judge_ms in ((100, 200), (100, 100), (200, 200)):
        judge = ListeningJudge()
        cfg = config(speculate=True, end_of_turn_threshold=0.5, pause_ms=judge_ms, speculate_pause_ms=speculate_ms)
        recorder, session = await call(worker, vad_feed, [question], cfg, turn_model=judge)
        assert recorder.of("response.done")[0]["timings"]["speculative"]
        runs[speculate_ms, judge_ms] = (recorder.replies(), session.usage, judge.heard)
    (replies, usage, heard), early, late = runs[100, 200], runs[100, 100], runs[200, 200]
    assert (replies, usage) == early[:2] and usage["audio_tokens"] < late[1]["audio_tokens"]
    # (judged at 96 ms, shorter gaps inside the question are pauses too: compare the silence that ends it)
    assert heard == late[2] and heard[-1] > early[2][-1]


async def test_talking_on_between_the_two_pauses_changes_nothing(
    worker: EngineWorker, vad_feed: VadFeed, speech_dir: Path
) -> None:
    """A 150 ms gap mid-sentence reaches the speculation's 100 ms pause, not the judge's 200 ms: the
    speculation started there is rolled back, and the reply is token for token the one never speculated."""
    audio = paused(speech_dir, "en", pause_s=0.15)
    cfg = config(speculate=True, speculate_pause_ms=100, pause_ms=200)
    plain, plain_session = await committed(
        worker, vad_feed, [audio], config(speculate=False), realtime=False, piece=FRAME
    )
    audio = audio[:-8_000]  # the speech, up to its last sample (as `committed` sends it)
    # Where the gap reaches the speculation's pause, and not the judge's (the same VAD, deterministic). The
    # audio goes in 20-ms frames, as WebRTC sends it: in 0.1-s pieces this gap's pause and resumption are one.
    frames = [audio[i : i + FRAME] for i in range(0, len(audio), FRAME)]
    detector, stream, events, cut = TurnDetector(cfg.turn), vad_feed.stream(), [], 0
    while not events:
        events = [e for e in detector.feed(await stream.feed(frames[cut])) if not isinstance(e, SpeechStarted)]
        cut += 1
    assert [(e.speculate, e.judge) for e in events if isinstance(e, SpeechPaused)] == [(True, False)]
    rest = detector.feed(await stream.feed(np.concatenate(frames[cut:])))
    assert isinstance(rest[0], SpeechResumed)  # (later gaps between words may reach 96 ms too, never 192)
    assert not [e for e in rest if isinstance(e, SpeechPaused) and e.judge]

    started = asyncio.Event()
    outcomes: list[str] = []

    def count(outcome: str) -> None:
        outcomes.append(outcome)
        started.set()

    worker.on_speculation = count
    recorder = Recorder()
    session = CallSession("same", worker, cfg, recorder.send, vad_feed)
    await session.start()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(session.run())
        for frame in frames[:cut]:
            session.push_audio(frame)
        async with asyncio.timeout(timeout(30)):
            await started.wait()  # the speculative reply is running when the user goes on
        for frame in frames[cut:]:
            session.push_audio(frame)
        session.commit()
        await recorder.until("response.done")
        session.close()
    assert outcomes == ["started", "discarded"] * (len(outcomes) // 2)  # the gap's, and any later ones
    assert recorder.replies() == plain.replies() and recorder.replies()[0][0] == "completed"
    assert session.conversation.context_tokens == plain_session.conversation.context_tokens
    assert session.usage == plain_session.usage


async def test_talking_on_right_after_a_reply_began_continues_the_turn(
    worker: EngineWorker, vad_feed: VadFeed, speech_dir: Path
) -> None:
    """A 900 ms pause ends the turn on a 500 ms window; speech 400 ms later withdraws and rolls back the
    reply, and the turn goes on to exactly the reply the uncut sentence gets."""
    audio = paused(speech_dir, "en", pause_s=0.9)
    cut_cfg = config(silence_ms=500, pause_ms=None, resume_window_s=1.0)
    cut, cut_session = await committed(worker, vad_feed, [audio], cut_cfg, realtime=True)
    uncut, uncut_session = await committed(worker, vad_feed, [audio], config(silence_ms=1200), realtime=False)
    assert [c["reason"] for c in cut.of("response.cancelled")] == ["user_continued"]
    assert len(cut.of("response.done")) == 2  # the withdrawn reply (done or cancelled as it was cut), the real one
    types = cut.types()
    assert types.index("response.created") < types.index("response.cancelled") < types.index("input.speech_started", 1)
    assert cut.replies()[-1] == uncut.replies()[-1]
    assert cut_session.conversation.context_tokens == uncut_session.conversation.context_tokens
    assert cut_session.usage == uncut_session.usage


async def test_barge_in_after_the_window_interrupts_without_rollback(vad_feed: VadFeed, question: Samples) -> None:
    """Talking over a reply after the resume window is a barge-in: interrupted, nothing withdrawn."""
    slow = EngineWorker(build_tiny_engine(seed=5, cost=EngineCost(audio_rtf=1.0)))
    try:
        recorder = Recorder()
        cfg = config(silence_ms=500, resume_window_s=0.3, max_new_tokens=96, min_new_tokens=3)
        session = CallSession("b", slow, cfg, recorder.send, vad_feed)
        await session.start()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(session.run())
            await push_realtime(session, np.concatenate([question, np.zeros(16_000, np.float32)]))
            await recorder.until("response.output_audio.delta", 2)
            await push_realtime(session, np.concatenate([question, np.zeros(16_000, np.float32)]))
            await recorder.until("response.done", 2, seconds=60)
            session.close()
        assert not recorder.of("response.cancelled")
        assert [d["response"]["status"] for d in recorder.of("response.done")] == ["interrupted", "completed"]
        assert len(recorder.of("response.listen")) == 1
    finally:
        slow.close()


async def test_two_calls_speculating_on_one_model_stay_isolated(
    vad_feed: VadFeed, speech_dir: Path, question: Samples
) -> None:
    """Two calls with speculation on, interleaved on one model, each get exactly their solo replies."""
    turns = {"a": [paused(speech_dir, "en"), question], "b": [question, paused(speech_dir, "zh")]}
    cfg = config(speculate=True)
    shared = EngineWorker(build_tiny_engine(seed=5, cost=EngineCost(first_chunk_s=0.02, audio_rtf=0.05)))
    try:
        solo = {cid: (await call(shared, vad_feed, t, cfg, call_id=cid))[0].replies() for cid, t in turns.items()}
        together = await asyncio.gather(*(call(shared, vad_feed, t, cfg, call_id=cid) for cid, t in turns.items()))
    finally:
        shared.close()
    for (recorder, _), cid in zip(together, turns, strict=True):
        assert recorder.replies() == solo[cid]


async def test_a_turn_hears_the_same_audio_in_pieces_of_any_size(
    worker: EngineWorker, vad_feed: VadFeed, speech_dir: Path
) -> None:
    """Speech starting inside a long piece (an SDK client's 1-s or 5-s appends) keeps all of it, and its
    pre-roll; 20 ms pieces that queue up (a busy machine) are taken together. Either way the model gets
    exactly the audio it gets from pieces taken one at a time, as they come in real time."""
    lead = np.zeros(int(1.3 * 16_000), np.float32)  # the speech starts 1.3 s into the first piece
    audio = np.concatenate([lead, paused(speech_dir, "en", pause_s=0.3)])
    cfg = config(speculate=False)
    paced, paced_session = await committed(worker, vad_feed, [audio], cfg, realtime=True)
    for piece in (FRAME, 16_000, 80_000):  # all queued at once
        at_once, session = await committed(worker, vad_feed, [audio], cfg, realtime=False, piece=piece)
        assert session.usage == paced_session.usage
        assert at_once.replies() == paced.replies()
    # Ended by the silence, the turn's audio is cut at its first pause, inside a long piece too: to the
    # VAD window (a piece's part in the window that reaches the pause goes with it, a 20-ms or 0.1-s
    # piece's is in the turn already). Cut at the long piece's end instead, up to ~1 s of speech was lost.
    for lead_s in (1.0, 1.2):
        audio = np.concatenate([np.zeros(int(lead_s * 16_000), np.float32), paused(speech_dir, "en", pause_s=0.3)])
        _, paced_session = await call(worker, vad_feed, [audio], cfg, realtime=True)
        _, session = await call(worker, vad_feed, [audio], cfg, piece=16_000)
        assert abs(session.usage["audio_tokens"] - paced_session.usage["audio_tokens"]) <= 1


async def test_pieces_waiting_in_the_inbox_go_to_the_vad_together(
    worker: EngineWorker, vad_feed: VadFeed, question: Samples
) -> None:
    """Queued 20 ms pieces reach the VAD as up to 0.5 s at a time, every sample once and in order."""
    seen: list[Samples] = []
    all_seen = asyncio.Event()
    session = CallSession("merge", worker, config(), Recorder().send, vad_feed)
    feed = session._vad.feed

    async def recording(samples: Samples) -> Any:
        seen.append(samples)
        if sum(map(len, seen)) >= 40 * FRAME:
            all_seen.set()
        return await feed(samples)

    session._vad.feed = recording  # type: ignore[method-assign]
    await session.start()
    pieces = [question[i : i + FRAME] for i in range(0, 40 * FRAME, FRAME)]
    for piece in pieces:
        session.push_audio(piece)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(session.run())
        async with asyncio.timeout(timeout(10)):
            await all_seen.wait()
        session.close()
    assert [len(s) for s in seen] == [8_000, 4_800]
    assert np.array_equal(np.concatenate(seen), np.concatenate(pieces))
