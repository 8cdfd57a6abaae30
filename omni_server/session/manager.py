"""The live calls: admission to the engine (`session/admission.py`) and `session.init` → `CallSession`.

`SessionManager.slot` admits a call against `max_sessions` slots and the KV budget (`kv_budget_gb`;
each call reserves `max_context_tokens` × the engine's KV bytes per token); callers beyond that wait
in the FIFO queue, told their position and a measured wait estimate. `SessionManager` turns a
client's `session.init` into a `CallSession` and keeps the live ones for shutdown and metrics.

Must not import: websockets, aiortc, torch.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from typing import Any

import numpy as np

from omni_server.config import Settings
from omni_server.engine.client import EngineClient
from omni_server.library.choice import choose_voice, decode_limits_for
from omni_server.library.preparer import VoicePreparer
from omni_server.library.store import VoiceStore
from omni_server.media.smart_turn import SmartTurnModel
from omni_server.media.vad import SileroVadModel
from omni_server.protocol import Send, SessionInit
from omni_server.session.admission import Admission, OnQueued
from omni_server.session.call_config import CallConfig
from omni_server.session.lead_in import LeadIn
from omni_server.session.session import CallSession
from omni_server.session.turns import TurnConfig
from omni_server.session.vad_feed import VadFeed

logger = logging.getLogger(__name__)


class SessionManager:
    """Makes calls from `session.init` and keeps the live ones (for shutdown and metrics)."""

    def __init__(
        self, settings: Settings, worker: EngineClient[Any], vad_model: SileroVadModel, voices: VoiceStore
    ) -> None:
        self.settings = settings
        self.worker = worker
        self.vad_model = vad_model  # voice preparation runs it directly
        self.vad = VadFeed(vad_model)  # every call's turn detection, batched (media/vad_batch.py)
        # Each call reserves the KV cache of its longest context (a session.init may only lower it).
        self.call_kv_bytes = settings.max_context_tokens * worker.info.kv_bytes_per_token
        kv_budget_bytes = int(settings.kv_budget_gb * 1e9)
        self.admission = Admission(settings.max_sessions, settings.max_queue, kv_budget_bytes=kv_budget_bytes)
        if kv_budget_bytes:
            fit = kv_budget_bytes // max(self.call_kv_bytes, 1)
            log = logger.warning if fit == 0 else logger.info
            log(
                "KV budget %.2f GB holds %d calls of %.3f GB (max_sessions %d)",
                kv_budget_bytes / 1e9, fit, self.call_kv_bytes / 1e9, settings.max_sessions,
            )  # fmt: skip
        self.sessions: dict[str, CallSession] = {}
        # Smart Turn, loaded once and shared by every call (its runs are thread-safe).
        self.turn_model = SmartTurnModel() if settings.turn_model else None
        self.voices = voices  # the server's one library, shared with its library endpoint
        self.voice_preparer = VoicePreparer(decode_limits_for(settings), vad_model)
        # One start-up hold for the engine's calls: it measures how the engine delivers a reply's chunks.
        lead_in_max_s = settings.reply_lead_in_max_ms / 1000
        self.lead_in = LeadIn(margin_s=min(0.04, lead_in_max_s), max_s=lead_in_max_s) if lead_in_max_s else None

    def slot(self, on_queued: OnQueued) -> contextlib.AbstractAsyncContextManager[None]:
        """Admission for one call: a slot and its KV reservation, held for the `async with` body."""
        return self.admission.slot(on_queued, kv_bytes=self.call_kv_bytes)

    def new_call_id(self) -> str:
        return f"rt_{int(time.time() * 1000)}_{secrets.token_hex(3)}"

    async def call_config(self, init: SessionInit, *, video: bool, user: str | None = None) -> CallConfig:
        """Resolve a client's `session.init` against the server's settings, limits and `user`'s library."""
        s = self.settings
        td = init.turn_detection
        voice = await choose_voice(init, user, self.voices, self.voice_preparer)
        ref = voice.ref_audio
        instructions = "\n".join(t for t in (voice.persona, init.system_prompt, init.instructions) if t) or None
        max_new_tokens = s.max_new_tokens if init.max_tokens is None else max(1, min(init.max_tokens, s.max_new_tokens))
        max_context = s.max_context_tokens
        if init.max_kv_tokens is not None:
            max_context = max(1024, min(init.max_kv_tokens, max_context))
        silence_ms = td.silence_ms if td.silence_ms is not None else s.vad_silence_ms
        threshold = td.threshold if td.threshold is not None else s.vad_threshold
        min_speech_ms = td.min_speech_ms if td.min_speech_ms is not None else s.vad_min_speech_ms
        asked = td.end_of_turn_threshold if td.end_of_turn_threshold is not None else s.turn_model_threshold
        eot = None if self.turn_model is None or asked >= 1.0 else min(max(asked, 0.05), 0.99)
        speculate = s.speculate if td.speculate is None else td.speculate
        resume_ms = s.resume_window_ms if td.resume_window_ms is None else min(max(td.resume_window_ms, 0), 10_000)
        # Out-of-range numbers from a client are brought into range, as the fields above are.
        slices = None if init.max_slice_nums is None else min(max(init.max_slice_nums, 1), 9)
        return CallConfig(
            video=video,
            conversation_mode=voice.conversation_mode,
            language=init.language,
            instructions=instructions,
            ref_audio=None if ref is None else np.ascontiguousarray(ref, dtype=np.float32),
            greeting=voice.greeting,
            max_new_tokens=max_new_tokens,
            temperature=None if init.temperature is None else min(max(init.temperature, 0.05), 2.0),
            tts_enabled=init.tts_enabled,
            max_slice_nums=2 if init.vision_hd else slices,
            turn_detection=td.enabled,
            turn=TurnConfig(
                threshold=min(max(threshold, 0.05), 0.95),
                min_silence_ms=min(max(silence_ms, 100), 5000),
                min_speech_ms=min(max(min_speech_ms, 0), 5000),
                pause_ms=s.turn_pause_ms if eot is not None else None,
                speculate_pause_ms=s.speculate_pause_ms if speculate else None,
            ),
            end_of_turn_threshold=eot,
            speculate=speculate,
            resume_window_s=resume_ms / 1000,
            barge_in=s.barge_in if td.barge_in is None else td.barge_in,
            preroll_ms=s.preroll_ms,
            max_context_tokens=max_context,
            max_call_s=s.max_call_s,
            idle_timeout_s=s.idle_timeout_s,
            input_burst_s=s.max_input_burst_s or None,
            max_prompt_tokens=s.max_prompt_tokens,
        )

    def engine_for(self, call_id: str) -> EngineClient[Any]:
        """The engine a new call (or reading) talks to for its whole life; `forget(call_id)` lets it go."""
        return self.worker

    def create(self, call_id: str, config: CallConfig, send: Send) -> CallSession:
        session = CallSession(
            call_id,
            self.engine_for(call_id),
            config,
            send,
            self.vad,
            turn_model=self.turn_model,
            lead_in=self.lead_in,
        )
        self.sessions[call_id] = session
        return session

    def forget(self, call_id: str) -> None:
        self.sessions.pop(call_id, None)

    def snapshot(self) -> dict[str, Any]:
        a = self.admission
        return {
            "active": a.active,
            "queued": a.queued,
            "calls": len(self.sessions),
            "kv_reserved_bytes": a.kv_reserved_bytes,
            "kv_budget_bytes": a.kv_budget_bytes,
            # Per live call: seconds of reply audio its listener has buffered now, and underruns so far.
            "ahead_of_playback_s": {cid: round(s.ahead_of_playback_s, 3) for cid, s in self.sessions.items()},
            "playback_underruns": {cid: s.playback_underruns for cid, s in self.sessions.items()},
        }
