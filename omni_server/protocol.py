"""The realtime wire protocol: typed client events in, JSON server events out.

The dialect is the one OpenBMB's MiniCPM-o Realtime service speaks (as the `openbmb-realtime` SDK 0.1.6
implements it), plus our documented additions (docs/protocol.md). `decode_client_event` is the one
place that validates client frames (JSON text, and our binary audio messages); everything after it works
with the dataclasses below. Server events are dataclasses too (`ServerEvent`), so the session and the
transports never write wire format themselves. Incoming media stays base64 text (or raw PCM bytes)
here: decoding samples and images belongs to `omni_server.media`, whose encoder also writes the reply
audio of `OutputAudioDelta`.

Must not import: torch, the engine, sockets.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from omni_server.errors import InvalidAudio, PayloadTooLarge, ProtocolError, error_payload
from omni_server.media.pcm import encode_f32_base64

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
    # Ours: the end-of-turn model's threshold (1.0: only the silence ends turns), speculation, resuming.
    end_of_turn_threshold: float | None = None
    speculate: bool | None = None
    resume_window_ms: int | None = None


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
class InputAudio:
    """Ours: microphone audio as a binary message (docs/protocol.md); `media.pcm.decode_pcm` decodes `pcm`."""

    pcm: memoryview  # little-endian samples, 16 kHz mono
    sample_format: str  # "f32" | "s16"


@dataclass(frozen=True)
class InputCommit:
    """Ours: end the user's turn now (manual turn-taking, or a client-side VAD)."""


@dataclass(frozen=True)
class SessionClose:
    reason: str = "user_stop"


@dataclass(frozen=True)
class ClientStats:
    """Ours: what the client's player saw (playback gaps), for metrics; running totals for the call."""

    underruns: int = 0  # 0..MAX_UNDERRUNS
    played_s: float = 0.0  # 0..MAX_PLAYED_S


@dataclass(frozen=True)
class WebRtcOffer:
    """Ours: a WebRTC call's SDP offer, on its signalling socket (docs/webrtc.md)."""

    sdp: str


# A call is at most hours long: one underrun per 20 ms frame of a day is still far below these.
MAX_UNDERRUNS = 10_000_000
MAX_PLAYED_S = 7 * 24 * 3600.0
MAX_TYPED_CHARS = 2000


@dataclass(frozen=True)
class InputText:
    """Ours: a message typed during the call, answered like a spoken turn (the model gets it as a user text turn)."""

    text: str


ClientEvent = (
    SessionInit | InputAppend | InputAudio | InputCommit | InputText | SessionClose | ClientStats | WebRtcOffer
)

# A binary message is [kind, 0, 0, 0] then PCM samples; the 4-byte header keeps them aligned (docs/protocol.md).
BINARY_HEADER = 4
BINARY_AUDIO_KINDS = {1: "f32", 2: "s16"}


def decode_client_event(raw: str | bytes, *, max_bytes: int) -> ClientEvent:
    """Parse and validate one client frame (JSON text, or our binary audio); raise `ProtocolError` with a clear message."""
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"Message of {len(raw)} bytes is over the {max_bytes}-byte limit.")
    if isinstance(raw, bytes):
        return _binary_audio(raw)
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ProtocolError(f"Message is not valid JSON ({e.msg} at position {e.pos}).", code="invalid_json") from e
    except RecursionError as e:  # json recurses per nesting level; a deep message must not kill the reader
        raise ProtocolError("Message is nested too deeply.", code="invalid_json") from e
    except ValueError as e:  # an integer of more than 4300 digits (Python's guard against slow conversions)
        raise ProtocolError("Message holds a number too long to read.", code="invalid_json") from e
    if not isinstance(obj, dict):
        raise ProtocolError("Message must be a JSON object with a 'type'.", code="invalid_json")
    kind = obj.get("type")
    if kind == "session.init":
        return _session_init(_obj(obj.get("payload", {}), "payload"))
    if kind in ("input.append", "input_audio_buffer.append"):
        return _input_append(_obj(obj.get("input", obj), "input"))
    if kind == "input.commit":
        return InputCommit()
    if kind == "input.text":
        return _input_text(obj)
    if kind == "session.close":
        return SessionClose(reason=_opt(obj, "reason", str) or "user_stop")
    if kind == "client.stats":
        return ClientStats(
            underruns=_bounded(obj, "underruns", int, MAX_UNDERRUNS),
            played_s=float(_bounded(obj, "played_s", float, MAX_PLAYED_S)),
        )
    if kind == "webrtc.offer":
        sdp = _opt(obj, "sdp", str)
        if not sdp:
            raise ProtocolError("webrtc.offer needs the offer's SDP text in 'sdp'.", code="invalid_sdp")
        return WebRtcOffer(sdp=sdp)
    raise ProtocolError(f"Unknown event type {str(kind)[:64]!r}.", code="unknown_event")  # never echo a long one


def _binary_audio(raw: bytes) -> InputAudio:
    kind = BINARY_AUDIO_KINDS.get(raw[0]) if len(raw) >= BINARY_HEADER else None
    if kind is None or any(raw[1:BINARY_HEADER]):
        raise InvalidAudio(
            "A binary message is audio: a 4-byte header [kind, 0, 0, 0] (kind 1: float32, 2: int16), "
            "then little-endian 16 kHz mono samples."
        )
    return InputAudio(memoryview(raw)[BINARY_HEADER:], kind)


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
            end_of_turn_threshold=_opt(td, "end_of_turn_threshold", float),
            speculate=_opt(td, "speculate", bool),
            resume_window_ms=_opt(td, "resume_window_ms", int),
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


def _input_text(obj: dict[str, Any]) -> InputText:
    text = _opt(obj, "text", str)
    if text is None or not text.strip():
        raise ProtocolError("input.text needs the message in 'text'.")
    if len(text) > MAX_TYPED_CHARS:
        raise PayloadTooLarge(
            f"A typed message may have at most {MAX_TYPED_CHARS} characters; this one has {len(text)}."
        )
    return InputText(text=text)


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


def _bounded(obj: dict[str, Any], key: str, kind: type, most: float) -> Any:
    """An optional count or total (0 when absent), from 0 to `most`."""
    value = _opt(obj, key, kind) or 0
    if not 0 <= value <= most:
        raise ProtocolError(f"Field {key!r} must be from 0 to {most:g}.")
    return value


# ---- server events -------------------------------------------------------------------------------
#
# Every event the server sends is one frozen dataclass below: its `type` is the wire name, its fields the
# wire fields (top-level fields left as None are not sent). Sessions and transports build these objects;
# only `encode` (or a transport with its own encoding of audio) turns them into bytes.


@dataclass(frozen=True)
class ServerEvent:
    """Base of the server's events; subclasses set `type` and their fields."""

    type: ClassVar[str] = ""

    def wire(self) -> dict[str, Any]:
        """The event as the JSON object a client receives."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {"type": self.type, **{k: v for k, v in fields.items() if v is not None}}


@dataclass(frozen=True)
class Error(ServerEvent):
    type: ClassVar[str] = "error"
    code: str
    message: str

    @classmethod
    def of(cls, exc: BaseException) -> Error:
        """The error a client sees for `exc` (no internals: see `errors.error_payload`)."""
        return cls(**error_payload(exc))

    def wire(self) -> dict[str, Any]:
        return {"type": self.type, "error": {"code": self.code, "message": self.message}}


@dataclass(frozen=True)
class SessionQueued(ServerEvent):
    type: ClassVar[str] = "session.queued"
    position: int
    estimated_wait_s: float
    queue_length: int
    reason: str | None = None  # "starting" while the model loads


@dataclass(frozen=True)
class SessionQueueDone(ServerEvent):
    type: ClassVar[str] = "session.queue_done"


@dataclass(frozen=True)
class SessionCreated(ServerEvent):
    type: ClassVar[str] = "session.created"
    session_id: str
    mode: str  # audio | video
    transport: str  # websocket | webrtc
    conversation_mode: str
    language: str
    engine: dict[str, Any]
    input_sample_rate: int
    output_sample_rate: int


@dataclass(frozen=True)
class SessionClosed(ServerEvent):
    type: ClassVar[str] = "session.closed"
    reason: str
    session_id: str | None = None  # None: the caller never had a session


@dataclass(frozen=True)
class SpeechStarted(ServerEvent):
    type: ClassVar[str] = "input.speech_started"
    audio_start_ms: int


@dataclass(frozen=True)
class SpeechStopped(ServerEvent):
    type: ClassVar[str] = "input.speech_stopped"
    audio_end_ms: int


@dataclass(frozen=True)
class ConversationTruncated(ServerEvent):
    type: ClassVar[str] = "conversation.truncated"
    reason: str
    dropped_tokens: int


@dataclass(frozen=True)
class ResponseCreated(ServerEvent):
    type: ClassVar[str] = "response.created"
    response_id: str


@dataclass(frozen=True)
class OutputTextDelta(ServerEvent):
    type: ClassVar[str] = "response.output_text.delta"
    response_id: str
    text: str


@dataclass(frozen=True, eq=False)
class OutputAudioDelta(ServerEvent):
    """Reply speech: float32 samples on the wire as base64 of little-endian float32."""

    type: ClassVar[str] = "response.output_audio.delta"
    response_id: str
    audio: npt.NDArray[np.float32]
    sample_rate: int
    ahead_of_playback_ms: float

    def wire(self) -> dict[str, Any]:
        return {**super().wire(), "audio": encode_f32_base64(self.audio)}


@dataclass(frozen=True)
class ResponseListen(ServerEvent):
    """Barge-in: the client drops the reply audio it has queued."""

    type: ClassVar[str] = "response.listen"
    response_id: str
    reason: str


@dataclass(frozen=True)
class ResponseCancelled(ServerEvent):
    """Ours: the reply is withdrawn and rolled back (the user went on talking: `reason` "user_continued");
    a client removes its words and drops its audio. `response.done` with status "cancelled" follows."""

    type: ClassVar[str] = "response.cancelled"
    response_id: str
    reason: str


@dataclass(frozen=True)
class ResponseDone(ServerEvent):
    type: ClassVar[str] = "response.done"
    response: dict[str, Any]  # {id, status, output_tokens, usage, reason (status "failed" only)}
    timings: dict[str, Any]


@dataclass(frozen=True)
class WebRtcConfig(ServerEvent):
    type: ClassVar[str] = "webrtc.config"
    ice_servers: list[dict[str, str]]


@dataclass(frozen=True)
class WebRtcAnswer(ServerEvent):
    type: ClassVar[str] = "webrtc.answer"
    sdp: str


Send = Callable[[ServerEvent], Awaitable[None]]  # a call's way out to its client


def encode(event: ServerEvent) -> str:
    """One server event as a JSON text frame."""
    return encode_fields(event.wire())


def encode_fields(obj: dict[str, Any]) -> str:
    """A JSON object as a compact text frame (the library socket's replies use it too)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def usage_payload(input_tokens: int, output_tokens: int, audio_tokens: int, vision_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
        "input_tokens_details": {"audio_tokens": audio_tokens, "vision_tokens": vision_tokens},
    }
