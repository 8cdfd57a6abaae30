"""Which voice, mode and persona a call uses, from its `session.init` and the caller's identity.

A call's voice comes from at most one of: `voice.ref_audio_base64` (16 kHz float32 PCM, as the SDK
sends it), `voice.ref_audio_file_base64` (an audio file), `voice.voice_id` (the library), or the
character's voice. Every one is prepared (trimmed, checked, normalised) the same way. A character
makes the call a role-play: its persona goes after the model's own `audio_roleplay` prompt and its
greeting is spoken first. A shared character brings its voice with it (its owner chose to share
both); a voice id alone must be the caller's own or shared.

Decoding and preparing a reference runs on the `VoicePreparer`'s threads, library reads and base64
decoding on the default executor: nothing here blocks the event loop. Must not import: torch,
websockets.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from omni_server.config import Settings
from omni_server.errors import NotFound, PayloadTooLarge, ProtocolError, from_media
from omni_server.library.preparer import VoicePreparer
from omni_server.library.store import LibraryLimits, VoiceStore
from omni_server.media.audio_file import DecodeLimits
from omni_server.media.pcm import decode_f32_base64
from omni_server.protocol import SessionInit

MAX_PCM_REFERENCE_S = 60.0


@dataclass(frozen=True)
class VoiceChoice:
    ref_audio: npt.NDArray[np.float32] | None
    conversation_mode: str
    persona: str | None = None
    greeting: str | None = None


def store_for(settings: Settings) -> VoiceStore:
    limits = LibraryLimits(
        max_voices_per_user=settings.max_voices_per_user,
        max_characters_per_user=settings.max_characters_per_user,
        max_total_bytes=settings.max_library_bytes,
    )
    return VoiceStore(Path(settings.data_dir), limits)


def decode_limits_for(settings: Settings) -> DecodeLimits:
    return DecodeLimits(
        max_bytes=min(settings.max_voice_bytes, settings.max_message_bytes),  # an upload is one message
        max_duration_s=settings.max_voice_input_s,
        max_decode_s=settings.voice_decode_timeout_s,
    )


async def choose_voice(init: SessionInit, user: str | None, store: VoiceStore, prepare: VoicePreparer) -> VoiceChoice:
    """Resolve the voice sources of `init` for `user`; raise an `OmniError` that says what is wrong."""
    given = [x for x in (init.ref_audio_base64, init.ref_audio_file_base64, init.voice_id) if x]
    if len(given) > 1:
        raise ProtocolError("Give one voice: ref_audio_base64, ref_audio_file_base64 or voice_id.")
    ref = None
    if init.ref_audio_base64:
        pcm = await asyncio.to_thread(_pcm, init.ref_audio_base64)
        ref = (await prepare.from_pcm(pcm)).samples
    elif init.ref_audio_file_base64:
        data = await asyncio.to_thread(_file, init.ref_audio_file_base64, prepare.limits)
        ref = (await prepare.from_file(data, "")).samples
    elif init.voice_id:
        ref = await asyncio.to_thread(store.reference, init.voice_id, user)
    if not init.character_id:
        return VoiceChoice(ref_audio=ref, conversation_mode=init.conversation_mode)
    character = await asyncio.to_thread(store.character, init.character_id, user)
    if ref is None and character.voice_id:
        try:
            ref = await asyncio.to_thread(store.reference, character.voice_id, character.owner)
        except NotFound as e:
            raise NotFound(f"The voice of {character.name!r} has been deleted; choose another voice.") from e
    return VoiceChoice(
        ref_audio=ref,
        conversation_mode="roleplay",
        persona=character.persona,
        greeting=(character.greeting or None) if init.greet else None,
    )


def _pcm(text: str) -> npt.NDArray[np.float32]:
    with from_media():
        return decode_f32_base64(text, max_samples=int(MAX_PCM_REFERENCE_S * 16_000))


def _file(text: str, limits: DecodeLimits) -> bytes:
    if len(text) > limits.max_bytes * 4 // 3 + 4:
        raise PayloadTooLarge("The voice file is over the size limit.")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ProtocolError("voice.ref_audio_file_base64 is not valid base64.") from e
