"""Text-to-speech: text read aloud in a reference voice, or the built-in one, as one short model conversation.

With a reference, MiniCPM-o's `voice_cloning` mode puts it in the system turn ("Clone the voice in the
provided audio prompt." + audio); without one, `audio_assistant` speaks in its built-in voice. The user
turn asks it to read the text (made plain: typed text cannot smuggle in special tokens, see
typed_text.py), and the reply's speech is the reading. The conversation is released as soon as the
reading ends or its consumer stops.

Must not import: websockets, aiortc, torch.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import numpy as np
import numpy.typing as npt

from omni_server.engine.base import OutputChunk
from omni_server.engine.client import EngineClient
from omni_server.errors import ProtocolError
from omni_server.session.typed_text import plain_text

MAX_TEXT_CHARS = 1000
READ_PROMPT = {"en": "Please read the text below.", "zh": "请朗读下面的文字。"}


def reading_text(text: str) -> str:
    """The text to read, checked (before a reading waits for the model): not empty, not too long."""
    text = text.strip()
    if not text:
        raise ProtocolError("Type something to read aloud.")
    if len(text) > MAX_TEXT_CHARS:
        raise ProtocolError(f"The text is {len(text)} characters; at most {MAX_TEXT_CHARS} can be read at once.")
    return text


async def read_aloud(
    worker: EngineClient[Any],
    conversation_id: str,
    ref_audio: npt.NDArray[np.float32] | None,
    text: str,
    *,
    language: str,
    max_new_tokens: int,
) -> AsyncGenerator[OutputChunk, None]:
    """Yield the reply's chunks (24 kHz speech and the text as the model writes it); no `ref_audio`: the built-in voice."""
    text = reading_text(text)
    mode = "audio_assistant" if ref_audio is None else "voice_cloning"
    conv = worker.open(conversation_id)
    try:
        system = await worker.run(conv, lambda m: m.get_sys_prompt(ref_audio=ref_audio, mode=mode, language=language))
        await worker.prefill(conv, [system])
        await worker.prefill(conv, [{"role": "user", "content": [READ_PROMPT[language] + "\n" + plain_text(text)]}])
        stream = await worker.reply(conv, max_new_tokens=max_new_tokens, generate_audio=True)
        try:
            while (chunk := await stream.next()) is not None:
                yield chunk
        finally:
            await stream.close()
    finally:
        await worker.release(conv)
