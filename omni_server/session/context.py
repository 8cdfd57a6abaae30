"""A call's conversation on the model: its system prompt, what each turn adds, what it costs, and a fresh
conversation when the context is full.

`CallContext` owns the model conversation (`handle`) and everything counted against it: the tokens each
prefill added (`usage`, by kind: the placeholders the model's processor made for audio and images,
engine/placeholders.py), how late units were prefilled, and the recent reply texts a fresh conversation
is told about. `CallSession` decides *when* to prefill; this decides *what* goes in and keeps the books.

Context: MiniCPM-o was trained to 8192 tokens and never truncates its cache. When the next unit plus a
reply would not fit, the call rolls over to a fresh model conversation: the system prompt (and so the
reference voice) is prefilled again, and the assistant's last replies go in as a short text note. It
never loops: `start` refuses a system prompt that leaves no room for a turn, and a note that takes the
room is dropped.

Typed text (instructions, typed messages, the greeting request, the note) goes in as `UserText`: the
engine makes its control strings inert and bounds it in its own tokens (engine/text.py).

Must not import: websockets, aiortc, torch.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from omni_server.engine.client import ConversationHandle, EngineClient
from omni_server.engine.placeholders import audio_tokens, image_tokens
from omni_server.engine.text import UserText
from omni_server.errors import ProtocolError, SessionEnded
from omni_server.protocol import ConversationTruncated, Send
from omni_server.session.call_config import CallConfig

logger = logging.getLogger(__name__)
Samples = npt.NDArray[np.float32]

PREFILL_BOUND_S = 1.0  # a unit prefilled later than this after its last sample arrived counts as late
_MEMORY_NOTE = {
    "en": "(Earlier in this call, which was too long to keep in full, you said: {text})",
    "zh": "（本次通话较长，之前的内容已省略。你之前说过：{text}）",
}
_GREETING = {  # role-play: the user turn that makes the character speak first
    "en": 'The call has just started. Greet me in character, beginning with: "{greeting}"',
    "zh": "通话刚刚开始。请以角色的身份向我问好，开头说：“{greeting}”",
}


class CallContext:
    """One call's model conversation and its books; `on_fresh` is told when a roll-over replaced it."""

    def __init__(
        self,
        call_id: str,
        worker: EngineClient[Any],
        config: CallConfig,
        send: Send,
        *,
        on_fresh: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.call_id = call_id
        self._worker = worker
        self.config = config
        self._send = send
        self._on_fresh = on_fresh
        self._clock = clock
        self._index = itertools.count()
        self.handle: ConversationHandle = worker.open(self._next_id())
        self.usage = {"input_tokens": 0, "output_tokens": 0, "audio_tokens": 0, "vision_tokens": 0}
        self.late_units = 0
        self.unit_tokens = 100  # what a unit adds: an estimate, refined by each prefill
        self.recent_replies: deque[str] = deque(maxlen=3)  # for the note of a fresh conversation

    async def start(self) -> None:
        """Prefill the system prompt; refuse one that leaves no room for a turn."""
        await self._prefill_system_prompt()
        if not self.fits_a_turn():
            used, limit = self.handle.context_tokens, self.config.max_context_tokens
            raise ProtocolError(
                f"The instructions and the voice take {used:,} of this call's {limit:,} tokens of context, "
                "leaving too little for the conversation: shorten them (or allow more context).",
                code="text_too_long",
            )

    async def release(self) -> None:
        await self._worker.release(self.handle)

    async def prefill_unit(self, audio: Samples, frame: Image.Image | None, *, arrived: float, bound_s: float) -> None:
        """A 1-s unit (or a turn's partial last one) of the user's audio, with the camera frame of a video
        call; due `bound_s` after its last sample `arrived`."""
        content: list[Any] = [audio]
        if self.config.video:
            content = ["<unit>", audio] if frame is None else ["<unit>", frame, audio]
        before = self.handle.context_tokens
        after = await self._worker.prefill(
            self.handle,
            [{"role": "user", "content": content}],
            max_slice_nums=self.config.max_slice_nums,
            deadline=arrived + bound_s,
        )
        if self._clock() - arrived > PREFILL_BOUND_S:
            self.late_units += 1
        added = after - before
        self.unit_tokens = max(self.unit_tokens, added)
        vision = 0 if frame is None else image_tokens(*frame.size, self.config.max_slice_nums)
        self._count_input(added, audio=audio_tokens(len(audio)), vision=vision)

    async def prefill_text(self, text: str) -> None:
        """A typed message as the user's text turn (after any audio of the same turn)."""
        await self._prefill_user_text(UserText(text))

    async def prefill_greeting(self, greeting: str) -> None:
        """The user turn that makes a role-play's character speak first, beginning with `greeting`."""
        await self._prefill_user_text(UserText(_GREETING[self.config.language].format(greeting=greeting)))

    def fits_a_turn(self, extra_tokens: float = 0.0) -> bool:
        """Whether the next unit (and `extra_tokens` more) and a whole reply still fit the context."""
        reserve = self.config.max_new_tokens + 32
        needed = self.unit_tokens + extra_tokens + reserve
        return self.handle.context_tokens + needed <= self.config.max_context_tokens

    async def make_room(self, extra_tokens: float = 0.0) -> None:
        """Roll over to a fresh conversation unless the next turn still fits."""
        if not self.fits_a_turn(extra_tokens):
            await self._roll_over()

    async def _prefill_user_text(self, text: UserText) -> None:
        before = self.handle.context_tokens
        after = await self._worker.prefill(self.handle, [{"role": "user", "content": [text]}])
        self._count_input(after - before)

    async def _prefill_system_prompt(self, note: str | None = None) -> None:
        cfg = self.config
        if cfg.conversation_mode == "voice_cloning" and cfg.ref_audio is None:
            raise ProtocolError("Voice-cloning mode needs a reference voice (voice.ref_audio_base64).")
        mode, language, ref = cfg.model_mode(), cfg.language, cfg.ref_audio
        msg = await self._worker.run(
            self.handle, lambda m: m.get_sys_prompt(ref_audio=ref, mode=mode, language=language)
        )
        extra = []  # typed (or, for the note, model-written) text: inert and bounded by the engine
        if cfg.instructions:
            extra.append(UserText("\n" + cfg.instructions, cfg.max_prompt_tokens, "The call's instructions"))
        if note:
            extra.append(UserText("\n" + note))
        if extra:
            msg = {**msg, "content": [*msg["content"], *extra]}
        before = self.handle.context_tokens
        after = await self._worker.prefill(self.handle, [msg], max_slice_nums=cfg.max_slice_nums)
        self._count_input(after - before, audio=0 if ref is None else audio_tokens(len(ref)))

    async def _roll_over(self) -> None:
        """Go on in a fresh model conversation; it never loops: `start` made sure the system prompt leaves room."""
        dropped = self.handle.context_tokens
        recent = " ".join(self.recent_replies)[-600:]
        note = _MEMORY_NOTE[self.config.language].format(text=recent) if recent else None
        await self._fresh(note)
        if note is not None and not self.fits_a_turn():
            await self._fresh(None)  # the note itself took the room: once more, without it
        if not self.fits_a_turn():  # (units grew past the estimate `start` checked with)
            raise SessionEnded("The conversation no longer fits the model's context.", code="context_full")
        logger.info("context rolled over", extra={"session_id": self.call_id, "dropped_tokens": dropped})
        await self._send(ConversationTruncated(reason="context_full", dropped_tokens=dropped))

    async def _fresh(self, note: str | None) -> None:
        await self._worker.release(self.handle)
        self.handle = self._worker.open(self._next_id())
        self._on_fresh()  # what the session kept of the conversation just dropped goes with it
        await self._prefill_system_prompt(note)

    def _count_input(self, tokens: int, *, audio: int = 0, vision: int = 0) -> None:
        """Count a prefill: `tokens` the context grew by, of which `audio` and `vision` are the placeholders the
        model's processor made (engine/placeholders.py; a sliced 640×480 frame is 198); never more than grew."""
        tokens = max(0, tokens)
        audio = min(audio, tokens)
        self.usage["input_tokens"] += tokens
        self.usage["audio_tokens"] += audio
        self.usage["vision_tokens"] += min(vision, tokens - audio)

    def _next_id(self) -> str:
        return f"{self.call_id}.{next(self._index)}"
