"""The realtime wire protocol: typed client events in, JSON server events out.

The dialect is the one OpenBMB's MiniCPM-o Realtime service speaks (as the `openbmb-realtime` SDK 0.1.6
implements it), plus our documented additions (docs/protocol.md). `decode_client_event` is the one
place that validates client JSON; everything after it works with the dataclasses below. Media stays
base64 text here: decoding samples and images belongs to `omni_server.media`.

Must not import: torch, the engine, sockets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from omni_server.errors import PayloadTooLarge, ProtocolError

SUBPROTOCOL = "map.realtime"
MODES = ("audio", "video")
CONVERSATION_MODES = ("assistant", "roleplay", "voice_cloning")
LANGUAGES = ("en", "zh")


@dataclass(frozen=True)
class TurnDetection:
    """Turn-taking knobs a client may set (all optional; server defaults apply)."""

    threshold: float | None = None
    silence_ms: int | None = None
    min_speech_ms: int | None = None
    barge_in: bool | None = None
    enabled: bool = True  # False: the client ends turns itself with `input.commit`


@dataclass(frozen=True)
class SessionInit:
    system_prompt: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    max_kv_tokens: int | None = None
    tts_enabled: bool = True
    vision_hd: bool = False
    ref_audio_base64: str | None = None  # 16 kHz mono float32 PCM, as the SDK sends it
    max_slice_nums: int | None = None
    # Our additions.
    ref_audio_file_base64: str | None = None  # an audio file (wav, mp3, m4a, ogg, webm, flac)
    voice_id: str | None = None  # a voice from the library (docs/voices.md)
    character_id: str | None = None  # a role-play character from the library
    greet: bool = True  # a character with a greeting speaks it first
    conversation_mode: str = "assistant"
    language: str = "en"
    instructions: str | None = None
    turn_detection: TurnDetection = field(default_factory=TurnDetection)


@dataclass(frozen=True)
class InputAppend:
    audio_base64: str
    video_frames_base64: tuple[str, ...] = ()
    force_listen: bool = False


@dataclass(frozen=True)
class InputCommit:
    """Ours: end the user's turn now (manual turn-taking, or a client-side VAD)."""


@dataclass(frozen=True)
class SessionClose:
    reason: str = "user_stop"


@dataclass(frozen=True)
class ClientStats:
    """Ours: what the client's player saw (playback gaps), for metrics."""

    underruns: int = 0
    played_s: float = 0.0


@dataclass(frozen=True)
class WebRtcOffer:
    """Ours: a WebRTC call's SDP offer, on its signalling socket (docs/webrtc.md)."""

    sdp: str


ClientEvent = SessionInit | InputAppend | InputCommit | SessionClose | ClientStats | WebRtcOffer


def decode_client_event(raw: str | bytes, *, max_bytes: int) -> ClientEvent:
    """Parse and validate one client text frame; raise `ProtocolError` with a clear message."""
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"Message of {len(raw)} bytes is over the {max_bytes}-byte limit.")
    if isinstance(raw, bytes):
        raise ProtocolError("Binary frames are not part of this protocol; send JSON text frames.")
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ProtocolError(f"Message is not valid JSON ({e.msg} at position {e.pos}).", code="invalid_json") from e
    except RecursionError as e:  # json recurses per nesting level; a deep message must not kill the reader
        raise ProtocolError("Message is nested too deeply.", code="invalid_json") from e
    if not isinstance(obj, dict):
        raise ProtocolError("Message must be a JSON object with a 'type'.", code="invalid_json")
    kind = obj.get("type")
    if kind == "session.init":
        return _session_init(_obj(obj.get("payload", {}), "payload"))
    if kind in ("input.append", "input_audio_buffer.append"):
        return _input_append(_obj(obj.get("input", obj), "input"))
    if kind == "input.commit":
        return InputCommit()
    if kind == "session.close":
        return SessionClose(reason=_opt(obj, "reason", str) or "user_stop")
    if kind == "client.stats":
        return ClientStats(
            underruns=_opt(obj, "underruns", int) or 0, played_s=float(_opt(obj, "played_s", float) or 0.0)
        )
    if kind == "webrtc.offer":
        sdp = _opt(obj, "sdp", str)
        if not sdp:
            raise ProtocolError("webrtc.offer needs the offer's SDP text in 'sdp'.", code="invalid_sdp")
        return WebRtcOffer(sdp=sdp)
    raise ProtocolError(f"Unknown event type {str(kind)[:64]!r}.", code="unknown_event")  # never echo a long one


def _session_init(p: dict[str, Any]) -> SessionInit:
    config = _obj(p.get("config", {}), "payload.config")
    voice = _obj(p.get("voice", {}), "payload.voice")
    td = _obj(p.get("turn_detection", {}), "payload.turn_detection")
    mode = _opt(p, "mode", str) or "assistant"
    if mode not in CONVERSATION_MODES:
        raise ProtocolError(f"payload.mode must be one of {', '.join(CONVERSATION_MODES)}.")
    language = _opt(p, "language", str) or "en"
    if language not in LANGUAGES:
        raise ProtocolError("payload.language must be 'en' or 'zh'.")
    return SessionInit(
        system_prompt=_opt(p, "system_prompt", str),
        max_tokens=_opt(config, "max_tokens", int),
        temperature=_opt(config, "temperature", float),
        max_kv_tokens=_opt(config, "max_kv_tokens", int),
        tts_enabled=_opt(config, "tts_enabled", bool) is not False,
        vision_hd=bool(_opt(config, "vision_hd", bool)),
        ref_audio_base64=_opt(voice, "ref_audio_base64", str),
        max_slice_nums=_opt(p, "max_slice_nums", int),
        ref_audio_file_base64=_opt(voice, "ref_audio_file_base64", str),
        voice_id=_opt(voice, "voice_id", str),
        character_id=_opt(p, "character_id", str),
        greet=_opt(p, "greet", bool) is not False,
        conversation_mode=mode,
        language=language,
        instructions=_opt(p, "instructions", str),
        turn_detection=TurnDetection(
            threshold=_opt(td, "threshold", float),
            silence_ms=_opt(td, "silence_ms", int),
            min_speech_ms=_opt(td, "min_speech_ms", int),
            barge_in=_opt(td, "barge_in", bool),
            enabled=td.get("type", "server_vad") != "none",
        ),
    )


def _input_append(p: dict[str, Any]) -> InputAppend:
    audio = p.get("audio", "")
    if not isinstance(audio, str):
        raise ProtocolError("input.audio must be a base64 string of 16 kHz mono float32 PCM.")
    frames = p.get("video_frames") or []
    if not isinstance(frames, list) or not all(isinstance(f, str) for f in frames):
        raise ProtocolError("input.video_frames must be a list of base64 JPEG strings.")
    return InputAppend(
        audio_base64=audio, video_frames_base64=tuple(frames), force_listen=_opt(p, "force_listen", bool) is True
    )


def _obj(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"{name} must be a JSON object.")
    return value


def _opt(obj: dict[str, Any], key: str, kind: type) -> Any:
    """An optional field of type `kind` (ints are accepted where floats are expected)."""
    value = obj.get(key)
    if value is None:
        return None
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise ProtocolError(f"Field {key!r} must be of type {kind.__name__}.")
    if kind is float and not abs(value) < 1e300:  # NaN, infinities, and ints too big for a float
        raise ProtocolError(f"Field {key!r} must be a finite number.")
    return value


# ---- server events -------------------------------------------------------------------------------


def encode(event_type: str, **fields: Any) -> str:
    """One server event as a JSON text frame."""
    return json.dumps({"type": event_type, **fields}, ensure_ascii=False, separators=(",", ":"))


def usage_payload(input_tokens: int, output_tokens: int, audio_tokens: int, vision_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
        "input_tokens_details": {"audio_tokens": audio_tokens, "vision_tokens": vision_tokens},
    }
