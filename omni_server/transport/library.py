"""The voice library over the one port: a WebSocket for changes and reading aloud, GET routes for reads.

websockets' HTTP parser takes only GET, so there is no POST upload: the page and API clients open
`/v1/library` (subprotocol `omni.library`) and send JSON requests, each with an `id` the reply echoes; `voice.add` is followed by
one binary frame holding the audio file. GET serves `/v1/user` (issue an identity), `/v1/voices`,
`/v1/voices/<id>.wav` (the prepared clip, for preview) and `/v1/characters`. The page itself is
served with an identity cookie when the browser has none. Requests run one at a time per socket;
decoding and file I/O run in threads. Every refusal is an `error` reply and the socket stays open.

Must not import: torch, the engine's models.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import logging
import re
import secrets
from collections.abc import Callable
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from omni_server.config import Settings
from omni_server.engine.base import OUTPUT_SAMPLE_RATE_HZ
from omni_server.errors import OmniError, ProtocolError, error_payload
from omni_server.library.identity import Identity
from omni_server.library.reference import voice_from_file
from omni_server.library.store import VoiceStore
from omni_server.media.pcm import AudioFormatError, encode_f32_base64
from omni_server.protocol import encode_fields
from omni_server.session.manager import SessionManager
from omni_server.session.reading import read_aloud, reading_text
from omni_server.transport import http as web

logger = logging.getLogger(__name__)
LIBRARY_PATH = "/v1/library"
LIBRARY_SUBPROTOCOL = "omni.library"
_PREVIEW = re.compile(r"^/v1/voices/(v[0-9a-f]{16})\.wav$")
_PAGE_PATHS = ("/", "/index.html")
FILE_WAIT_S = 30.0


class LibraryEndpoint:
    """Library routes and the `/v1/library` socket, for the people `identity` tells apart."""

    def __init__(self, settings: Settings, identity: Identity, store: VoiceStore) -> None:
        self.settings = settings
        self.identity = identity
        self.store = store
        self.manager: SessionManager | None = None  # the socket is served once the engine is loaded

    def attach(self, manager: SessionManager) -> None:
        """The engine is loaded: serve the socket, and let calls resolve voices from this same store."""
        self.manager = manager
        manager.voices = self.store

    @property
    def _calls(self) -> SessionManager:
        if self.manager is None:  # the server refuses /v1/library handshakes until it is ready
            raise OmniError("The server is still starting.", code="starting")
        return self.manager

    # ---- GET ---------------------------------------------------------------------------------------

    def route(self, request: Request, path: str, fallback: Callable[[str], Response]) -> Response | None:
        """A library GET (or None for the `/v1/library` handshake); any other path goes to `fallback`,
        and the page gets an identity cookie if the browser has none."""
        if path == LIBRARY_PATH:
            return None
        user = self.identity.user_of(request.path, request.headers.raw_items())
        if path == "/v1/user":
            if user is None:
                user, credential = self.identity.issue()
                return _json({"user": user, "credential": credential}, cookie=self.identity.cookie(credential))
            return _json({"user": user})
        if path == "/v1/voices":
            return _json({"voices": [v.public(user) for v in self.store.list_voices(user)]})
        if path == "/v1/characters":
            return _json({"characters": [c.public(user) for c in self.store.list_characters(user)]})
        match = _PREVIEW.match(path)
        if match:
            try:
                body = self.store.wav_path(match.group(1), user).read_bytes()
            except (OmniError, FileNotFoundError):
                return web.text(http.HTTPStatus.NOT_FOUND, "No such voice.")
            return web.respond(http.HTTPStatus.OK, body, "audio/wav")
        response = fallback(path)
        if path in _PAGE_PATHS and user is None and response.status_code == http.HTTPStatus.OK:
            _, credential = self.identity.issue()
            response.headers["Set-Cookie"] = self.identity.cookie(credential)
        return response

    # ---- the socket --------------------------------------------------------------------------------

    async def handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        user = self.identity.user_of(ws.request.path, ws.request.headers.raw_items())
        try:
            async for raw in ws:
                if isinstance(raw, bytes):
                    await self._reply(
                        ws,
                        None,
                        "error",
                        error={"code": "invalid_request", "message": "A binary frame must follow a voice.add request."},
                    )
                    continue
                request: dict[str, Any] = {}
                try:
                    request = _request(raw)
                    await self._serve(ws, user, request)
                except (OmniError, AudioFormatError) as e:
                    payload = (
                        error_payload(e) if isinstance(e, OmniError) else {"code": "invalid_audio", "message": str(e)}
                    )
                    await self._reply(ws, request.get("id"), "error", error=payload)
                except Exception as e:  # the boundary: log it once, tell the client plainly, keep serving
                    logger.exception("library request %r failed", request.get("type"))
                    await self._reply(ws, request.get("id"), "error", error=error_payload(e))
        except ConnectionClosed:
            pass

    async def _serve(self, ws: ServerConnection, user: str | None, request: dict[str, Any]) -> None:
        kind, rid = request["type"], request.get("id")
        store = self.store
        if kind == "voice.list":
            voices = await asyncio.to_thread(store.list_voices, user)
            await self._reply(ws, rid, "voice.list", voices=[v.public(user) for v in voices])
        elif kind == "character.list":
            characters = await asyncio.to_thread(store.list_characters, user)
            await self._reply(ws, rid, "character.list", characters=[c.public(user) for c in characters])
        elif kind == "tts.read":
            await self._read(ws, user, request)
        elif user is None:
            raise ProtocolError(
                "Changing the library needs a user identity: open the page, or GET /v1/user.", code="no_identity"
            )
        elif kind == "voice.add":
            data = await self._file(ws)
            prepared = await asyncio.to_thread(
                voice_from_file, data, _str(request, "content_type"), self._calls.decode_limits, self._calls.vad_model
            )
            voice = await asyncio.to_thread(
                store.add_voice,
                user,
                _str(request, "name"),
                request.get("language", "en"),
                prepared,
                shared=request.get("shared") is True,
            )
            logger.info("voice added", extra={"voice_id": voice.id, "duration_s": voice.duration_s})
            await self._reply(ws, rid, "voice.added", voice=voice.public(user))
        elif kind == "voice.update":
            name, shared = request.get("name"), request.get("shared")
            voice = await asyncio.to_thread(
                store.update_voice,
                user,
                _str(request, "voice_id"),
                name=name,
                shared=shared if isinstance(shared, bool) else None,
            )
            await self._reply(ws, rid, "voice.updated", voice=voice.public(user))
        elif kind == "voice.delete":
            await asyncio.to_thread(store.delete_voice, user, _str(request, "voice_id"))
            await self._reply(ws, rid, "voice.deleted", voice_id=request["voice_id"])
        elif kind in ("character.create", "character.update"):
            fields = request.get("character")
            if not isinstance(fields, dict):
                raise ProtocolError("character must be a JSON object.")
            cid = _str(request, "character_id") if kind == "character.update" else None
            character = await asyncio.to_thread(store.save_character, user, fields, cid)
            await self._reply(ws, rid, "character.saved", character=character.public(user))
        elif kind == "character.delete":
            await asyncio.to_thread(store.delete_character, user, _str(request, "character_id"))
            await self._reply(ws, rid, "character.deleted", character_id=request["character_id"])
        else:
            raise ProtocolError(f"Unknown request type {kind!r}.", code="unknown_event")

    async def _file(self, ws: ServerConnection) -> bytes:
        """The binary frame that follows `voice.add` (a text frame instead is a protocol error)."""
        try:
            async with asyncio.timeout(FILE_WAIT_S):
                frame = await ws.recv()
        except TimeoutError:
            raise ProtocolError("voice.add must be followed by the audio file as one binary frame.") from None
        if not isinstance(frame, bytes):
            raise ProtocolError("voice.add must be followed by the audio file as one binary frame, not text.")
        return frame

    async def _read(self, ws: ServerConnection, user: str | None, request: dict[str, Any]) -> None:
        """TTS in a library voice (or the built-in one: no `voice_id`): stream `tts.delta` (base64 float32,
        24 kHz) then `tts.done`. The text is checked before the reading waits for a slot."""
        rid = request.get("id")
        language = request.get("language", "en")
        if language not in ("en", "zh"):
            raise ProtocolError("language must be 'en' or 'zh'.")
        text = reading_text(_str(request, "text"))
        voice_id = _str(request, "voice_id")
        ref = await asyncio.to_thread(self.store.reference, voice_id, user) if voice_id else None

        async def on_queued(position: int, wait_s: float, length: int) -> None:
            await self._reply(ws, rid, "tts.queued", position=position, estimated_wait_s=wait_s)

        audio_s = 0.0
        # A reading is model work like a call: it takes one of the engine's call slots while it runs.
        reading_id = f"tts_{secrets.token_hex(4)}"
        async with self._calls.slot(on_queued):
            try:
                reading = read_aloud(
                    self._calls.engine_for(reading_id),
                    reading_id,
                    ref,
                    text,
                    language=language,
                    max_new_tokens=self.settings.max_new_tokens,
                )
                async with contextlib.aclosing(reading) as chunks:  # frees the model conversation if the client goes
                    async for chunk in chunks:
                        if not chunk.audio.size:
                            continue
                        audio_s += chunk.duration_s
                        b64 = encode_f32_base64(chunk.audio)
                        await self._reply(
                            ws, rid, "tts.delta", audio=b64, text=chunk.text, sample_rate=OUTPUT_SAMPLE_RATE_HZ
                        )
            finally:
                self._calls.forget(reading_id)
        await self._reply(ws, rid, "tts.done", audio_s=round(audio_s, 3), sample_rate=OUTPUT_SAMPLE_RATE_HZ)

    @staticmethod
    async def _reply(ws: ServerConnection, rid: Any, kind: str, **fields: Any) -> None:
        await ws.send(encode_fields({"type": kind, "id": rid, **fields}))


def _request(raw: str) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ProtocolError(f"Request is not valid JSON ({e.msg}).", code="invalid_json") from e
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise ProtocolError("A request must be a JSON object with a 'type'.", code="invalid_json")
    return obj


def _str(request: dict[str, Any], key: str) -> str:
    value = request.get(key, "")
    if not isinstance(value, str):
        raise ProtocolError(f"{key} must be text.")
    return value


def _json(body: dict[str, Any], *, cookie: str | None = None) -> Response:
    extra = (("Set-Cookie", cookie),) if cookie else ()
    data = json.dumps(body, ensure_ascii=False).encode("utf-8")
    return web.respond(http.HTTPStatus.OK, data, "application/json", extra)
