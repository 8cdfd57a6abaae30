"""The realtime WebSocket API: frames in, typed events to the call, server events out.

Speaks the MiniCPM-o Realtime dialect (`/v1/realtime?mode=audio|video`, subprotocol `map.realtime`) as
the `openbmb-realtime` SDK expects: `session.queued`* → `session.queue_done` → client `session.init` →
`session.created` → `input.append`... → `response.*` → `session.closed`. A bad frame gets an `error`
event and the call goes on; nothing a client sends can end another client's call.

Must not import: torch, the engine's models.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from omni_server.engine.base import EngineInfo
from omni_server.errors import OmniError, ProtocolError, SessionEnded, SessionRefused, error_payload
from omni_server.media.images import ImageFormatError, decode_image
from omni_server.media.pcm import AudioFormatError, decode_f32_base64
from omni_server.metrics import ServerMetrics
from omni_server.protocol import (
    ClientStats,
    InputAppend,
    InputCommit,
    SessionClose,
    SessionInit,
    WebRtcOffer,
    decode_client_event,
    encode,
)
from omni_server.session.manager import SessionManager
from omni_server.session.session import CallSession, describe_engine
from omni_server.transport.guard import SlowClient

logger = logging.getLogger(__name__)
INIT_TIMEOUT_S = 30.0
REALTIME_PATH = "/v1/realtime"


Identify = Callable[[str, Iterable[tuple[str, str]]], str | None]  # (request path, headers) -> user id


def anonymous(path: str, headers: Iterable[tuple[str, str]]) -> str | None:
    return None


class RealtimeEndpoint:
    """Serves one WebSocket connection per call of `handle`."""

    def __init__(self, manager: SessionManager, engine_info: EngineInfo, metrics: ServerMetrics | None = None) -> None:
        self.manager = manager
        self.engine_info = engine_info
        self.settings = manager.settings
        self.identify: Identify = anonymous
        self.metrics = metrics or ServerMetrics()

    async def handle(self, ws: ServerConnection) -> None:
        send = self.metrics.observe(_sender(ws))
        query = parse_qs(urlsplit(ws.request.path if ws.request else "").query)
        mode = query.get("mode", ["audio"])[0]
        if mode not in ("audio", "video"):
            await send("error", error={"code": "invalid_request", "message": "mode must be audio or video."})
            await ws.close(1008, "bad mode")
            return
        call_id = self.manager.new_call_id()
        reason = "error"
        try:
            async with self.manager.slot(_queued(send)):
                await send("session.queue_done")
                reason = await self._serve(ws, send, call_id, video=mode == "video")
        except SessionRefused as e:
            await _quietly(send("error", error=error_payload(e)))
            reason = e.code
        except (ConnectionClosed, SessionEnded):
            reason = "disconnected"
        finally:
            self.manager.forget(call_id)
            await _quietly(send("session.closed", session_id=call_id, reason=reason))
            await ws.close()
            logger.info("call ended", extra={"session_id": call_id, "reason": reason})

    async def _serve(self, ws: ServerConnection, send: Any, call_id: str, *, video: bool) -> str:
        init = await self._wait_for_init(ws, send)
        user = self.identify(ws.request.path, ws.request.headers.raw_items()) if ws.request else None
        try:
            config = await asyncio.to_thread(self.manager.call_config, init, video=video, user=user)
        except (OmniError, AudioFormatError) as e:
            await send("error", error=_payload(e))
            return "error"
        session = self.manager.create(call_id, config, send)
        try:
            await session.start()
        except OmniError as e:
            await session.release()
            await send("error", error=error_payload(e))
            return "error"
        await send(
            "session.created",
            session_id=call_id,
            mode="video" if video else "audio",
            conversation_mode=config.conversation_mode,
            language=config.language,
            engine=describe_engine(self.engine_info),
            input_sample_rate=16000,
            output_sample_rate=24000,
        )
        logger.info("call started", extra={"session_id": call_id})
        reader = asyncio.create_task(self._read_loop(ws, send, session), name=f"{call_id}-reader")
        try:
            return await session.run()
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _wait_for_init(self, ws: ServerConnection, send: Any) -> SessionInit:
        async with asyncio.timeout(INIT_TIMEOUT_S):
            while True:
                raw = await ws.recv()
                try:
                    event = decode_client_event(raw, max_bytes=self.settings.max_message_bytes)
                except ProtocolError as e:
                    await send("error", error=error_payload(e))
                    continue
                if isinstance(event, SessionInit):
                    return event
                if isinstance(event, SessionClose):
                    raise ConnectionClosed(None, None)
                await send("error", error={"code": "not_initialized", "message": "Send session.init first."})

    async def _read_loop(self, ws: ServerConnection, send: Any, session: CallSession) -> None:
        """Decode every client frame; a bad one gets an `error` event and the call goes on."""
        try:
            async for raw in ws:
                event: object = None
                try:
                    event = decode_client_event(raw, max_bytes=self.settings.max_message_bytes)
                    await self._dispatch(event, session)
                except (ProtocolError, AudioFormatError, ImageFormatError) as e:
                    await send("error", error=_payload(e))
                if isinstance(event, SessionClose):
                    return
        except ConnectionClosed:
            pass
        except SessionEnded as e:  # our reply to this client could not be sent (gone, or not reading)
            session.close(e.code)
            return
        session.close("disconnected")

    async def _dispatch(self, event: object, session: CallSession) -> None:
        s = self.settings
        if isinstance(event, InputAppend):
            if event.force_listen:
                session.force_listen()
            image = None
            if event.video_frames_base64 and session.config.video:
                image = await asyncio.to_thread(_decode_frame, event.video_frames_base64[-1], s)
            if event.audio_base64:
                samples = decode_f32_base64(event.audio_base64, max_samples=int(s.max_append_s * 16000))
                session.push_audio(samples, image)
            elif image is not None:
                session.push_frame(image)
        elif isinstance(event, InputCommit):
            session.commit()
        elif isinstance(event, SessionClose):
            session.close("stopped")
        elif isinstance(event, ClientStats):
            self.metrics.client_underruns(session.client_underruns, event.underruns)
            session.client_underruns = event.underruns
        elif isinstance(event, SessionInit):
            raise ProtocolError("The session is already initialised.", code="already_initialized")
        elif isinstance(event, WebRtcOffer):
            raise ProtocolError("webrtc.offer belongs on /v1/realtime?transport=webrtc (docs/webrtc.md).")


def _decode_frame(b64: str, settings: Any) -> Any:
    import base64
    import binascii

    if len(b64) > settings.max_frame_bytes * 4 // 3 + 4:
        raise ProtocolError("Camera frame is over the size limit.", code="payload_too_large")
    try:
        data = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ProtocolError("Camera frame is not valid base64.", code="invalid_image") from e
    return decode_image(data, max_bytes=settings.max_frame_bytes, max_pixels=settings.max_frame_pixels)


def _payload(e: Exception) -> dict[str, str]:
    if isinstance(e, AudioFormatError):
        return {"code": "invalid_audio", "message": str(e)}
    if isinstance(e, ImageFormatError):
        return {"code": "invalid_image", "message": str(e)}
    return error_payload(e)


def _sender(ws: ServerConnection) -> Any:
    """`send(event_type, **fields)`; a vanished client ends the call as `disconnected`."""

    async def send(event_type: str, **fields: Any) -> None:
        try:
            await ws.send(encode(event_type, **fields))
        except SlowClient as e:
            raise SessionEnded("The client stopped reading.", code="slow_client") from e
        except ConnectionClosed as e:
            raise SessionEnded("The client disconnected.", code="disconnected") from e

    return send


def _queued(send: Any) -> Any:
    async def on_queued(position: int, wait_s: float, length: int) -> None:
        await send("session.queued", position=position, estimated_wait_s=wait_s, queue_length=length)

    return on_queued


async def _quietly(aw: Any) -> None:
    with contextlib.suppress(SessionEnded):
        await aw
