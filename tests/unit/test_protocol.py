"""Client frames are validated in one place, with messages a person can act on."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from omni_server.errors import PayloadTooLarge, ProtocolError
from omni_server.protocol import (
    ClientStats,
    Error,
    InputAppend,
    InputAudio,
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


def test_size_limit_comes_first() -> None:
    """Oversize frames, text or binary, are refused before parsing."""
    with pytest.raises(PayloadTooLarge):
        decode_client_event("x" * 100, max_bytes=10)
    with pytest.raises(PayloadTooLarge):
        decode_client_event(bytes([1, 0, 0, 0]) + b"\x00" * 100, max_bytes=10)


def test_binary_audio_frames() -> None:
    """Ours: a binary message is [kind, 0, 0, 0] then raw samples; kind 1 is float32, 2 is int16."""
    pcm = b"\x00\x00\x80\xbf" * 2
    event = decode_client_event(bytes([1, 0, 0, 0]) + pcm, max_bytes=100)
    assert isinstance(event, InputAudio) and event.sample_format == "f32" and bytes(event.pcm) == pcm
    event = decode_client_event(bytes([2, 0, 0, 0, 1, 2]), max_bytes=100)
    assert isinstance(event, InputAudio) and event.sample_format == "s16" and bytes(event.pcm) == b"\x01\x02"


@pytest.mark.parametrize("raw", [b"", b"\x01\x00", bytes([3, 0, 0, 0]), bytes([1, 0, 1, 0]), b"{}"])
def test_malformed_binary_frames_are_invalid_audio(raw: bytes) -> None:
    """A short header, an unknown kind or non-zero reserved bytes are refused as invalid_audio, saying the format."""
    with pytest.raises(ProtocolError, match="4-byte header") as info:
        decode_client_event(raw, max_bytes=100)
    assert info.value.code == "invalid_audio"


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


@pytest.mark.parametrize(
    "stats",
    [
        '{"type":"client.stats","underruns":1e400}',
        '{"type":"client.stats","underruns":1' + "0" * 400 + "}",
        '{"type":"client.stats","underruns":1' + "0" * 5000 + "}",
        '{"type":"client.stats","underruns":-1}',
        '{"type":"client.stats","underruns":3,"played_s":1e299}',
        '{"type":"client.stats","underruns":3,"played_s":NaN}',
    ],
)
def test_client_stats_out_of_range_are_protocol_errors(stats: str) -> None:
    """Huge, non-finite, negative or over-long numbers in client.stats are refused plainly, never passed on."""
    with pytest.raises(ProtocolError):
        decode_client_event(stats, max_bytes=1 << 20)


def test_client_stats_in_range_are_kept() -> None:
    """A running total of underruns and seconds played comes through as sent."""
    event = decode({"type": "client.stats", "underruns": 12, "played_s": 30.5})
    assert event == ClientStats(underruns=12, played_s=30.5)
