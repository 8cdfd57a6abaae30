"""Client frames are validated in one place, with messages a person can act on."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from omni_server.errors import PayloadTooLarge, ProtocolError
from omni_server.protocol import (
    Error,
    InputAppend,
    InputText,
    OutputAudioDelta,
    SessionClosed,
    SessionInit,
    decode_client_event,
    encode,
)


def decode(obj: object) -> object:
    return decode_client_event(json.dumps(obj), max_bytes=1 << 20)


def test_sdk_session_init_is_understood() -> None:
    """The SDK's session.init (system prompt, config, voice) maps onto typed fields."""
    event = decode(
        {
            "type": "session.init",
            "payload": {
                "system_prompt": "Be brief.",
                "config": {"max_tokens": 64, "temperature": 0.5, "tts_enabled": True, "vision_hd": True},
                "voice": {"ref_audio_base64": "AAAA"},
                "max_slice_nums": 2,
            },
        }
    )
    assert isinstance(event, SessionInit)
    assert (event.system_prompt, event.max_tokens, event.temperature, event.vision_hd) == ("Be brief.", 64, 0.5, True)
    assert event.ref_audio_base64 == "AAAA" and event.conversation_mode == "assistant"


def test_input_append_with_frames_and_force_listen() -> None:
    """input.append carries audio, optional frames and force_listen."""
    event = decode({"type": "input.append", "input": {"audio": "", "video_frames": ["x"], "force_listen": True}})
    assert event == InputAppend(audio_base64="", video_frames_base64=("x",), force_listen=True)


def test_input_text_carries_a_typed_message() -> None:
    """Ours: input.text holds the message as typed; empty, non-text or over-long messages are refused plainly."""
    assert decode({"type": "input.text", "text": "Hello <|im_end|>"}) == InputText(text="Hello <|im_end|>")
    for bad in ({}, {"text": ""}, {"text": "   "}, {"text": 42}):
        with pytest.raises(ProtocolError, match="text"):
            decode({"type": "input.text", **bad})
    with pytest.raises(PayloadTooLarge, match="2000 characters"):
        decode({"type": "input.text", "text": "a" * 2001})


@pytest.mark.parametrize(
    ("obj", "code"),
    [
        ({"type": "session.init", "payload": {"mode": "karaoke"}}, "invalid_request"),
        ({"type": "session.init", "payload": {"language": "fr"}}, "invalid_request"),
        ({"type": "session.init", "payload": {"config": {"max_tokens": "many"}}}, "invalid_request"),
        ({"type": "session.init", "payload": {"config": {"tts_enabled": 1}}}, "invalid_request"),
        ({"type": "input.append", "input": {"video_frames": "x"}}, "invalid_request"),
        ({"type": 42}, "unknown_event"),
    ],
)
def test_invalid_fields_are_refused(obj: object, code: str) -> None:
    """Wrong types and values raise ProtocolError with a code."""
    with pytest.raises(ProtocolError) as info:
        decode(obj)
    assert info.value.code == code


def test_size_and_binary_frames() -> None:
    """Oversize and binary frames are refused before parsing."""
    with pytest.raises(PayloadTooLarge):
        decode_client_event("x" * 100, max_bytes=10)
    with pytest.raises(ProtocolError):
        decode_client_event(b"\x00\x01", max_bytes=10)


def test_library_voice_and_character_fields() -> None:
    """Ours: voice.voice_id, voice.ref_audio_file_base64, character_id and greet; wrong types are refused."""
    event = decode(
        {
            "type": "session.init",
            "payload": {
                "voice": {"voice_id": "v1", "ref_audio_file_base64": "UklG"},
                "character_id": "c1",
                "greet": False,
            },
        }
    )
    assert isinstance(event, SessionInit)
    assert (event.voice_id, event.ref_audio_file_base64, event.character_id, event.greet) == ("v1", "UklG", "c1", False)
    assert decode({"type": "session.init", "payload": {}}).greet is True  # type: ignore[attr-defined]
    with pytest.raises(ProtocolError, match="voice_id"):
        decode({"type": "session.init", "payload": {"voice": {"voice_id": 7}}})


def test_server_events_keep_the_wire_format() -> None:
    """Typed server events encode to the dialect's JSON: nested errors, base64 float32 audio, no null extras."""
    samples = np.array([0.5, -0.25], dtype=np.float32)
    audio = json.loads(encode(OutputAudioDelta("resp_1", samples, 24000, 120.0)))
    assert audio == {
        "type": "response.output_audio.delta",
        "response_id": "resp_1",
        "audio": base64.b64encode(samples.astype("<f4").tobytes()).decode("ascii"),
        "sample_rate": 24000,
        "ahead_of_playback_ms": 120.0,
    }
    assert json.loads(encode(Error("timeout", "Too slow."))) == {
        "type": "error",
        "error": {"code": "timeout", "message": "Too slow."},
    }
    assert json.loads(encode(SessionClosed(reason="queue_full"))) == {"type": "session.closed", "reason": "queue_full"}
    assert Error.of(RuntimeError("secret internals")).code == "internal_error"
