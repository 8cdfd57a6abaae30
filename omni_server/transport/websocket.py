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
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from omni_server.errors import OmniError, ProtocolError, SessionEnded
from omni_server.media.images import ImageFormatError, decode_image
from omni_server.media.pcm import AudioFormatError, decode_f32_base64
from omni_server.protocol import Error, InputAppend, Send, SessionClose, SessionInit, WebRtcOffer, decode_client_event
from omni_server.session.session import CallSession
from omni_server.transport.calls import CallEndpoint, error_event, sender

INIT_TIMEOUT_S = 30.0
REALTIME_PATH = "/v1/realtime"


class RealtimeEndpoint(CallEndpoint):
    """Serves one WebSocket connection per call of `handle`."""

    transport = "websocket"

    async def handle(self, ws: ServerConnection) -> None:
        send = self.metrics.observe(sender(ws))
        query = parse_qs(urlsplit(ws.request.path if ws.request else "").query)
        mode = query.get("mode", ["audio"])[0]
        if mode not in ("audio", "video"):
            await send(Error("invalid_request", "mode must be audio or video."))
            await ws.close(1008, "bad mode")
            return
        await self.admit(ws, send, lambda call_id: self._serve(ws, send, call_id, video=mode == "video"))

    async def _serve(self, ws: ServerConnection, send: Send, call_id: str, *, video: bool) -> str:
        init = await self._wait_for_init(ws, send)
        try:
            config = await self.configure(ws, init, video=video)
        except (OmniError, AudioFormatError) as e:
            await send(error_event(e))
            return "error"
        session = await self.open(call_id, config, send, output_sample_rate=24000, audio_sink=None)
        if session is None:
            return "error"
        reader = asyncio.create_task(self._read_loop(ws, send, session), name=f"{call_id}-reader")
        try:
            return await session.run()
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _wait_for_init(self, ws: ServerConnection, send: Send) -> SessionInit:
        async with asyncio.timeout(INIT_TIMEOUT_S):
            while True:
                raw = await ws.recv()
                try:
                    event = decode_client_event(raw, max_bytes=self.settings.max_message_bytes)
                except ProtocolError as e:
                    await send(Error.of(e))
                    continue
                if isinstance(event, SessionInit):
                    return event
                if isinstance(event, SessionClose):
                    raise ConnectionClosed(None, None)
                await send(Error("not_initialized", "Send session.init first."))

    async def _read_loop(self, ws: ServerConnection, send: Send, session: CallSession) -> None:
        """Decode every client frame; a bad one gets an `error` event and the call goes on."""
        try:
            async for raw in ws:
                event: object = None
                try:
                    event = decode_client_event(raw, max_bytes=self.settings.max_message_bytes)
                    await self._dispatch(event, session)
                except (ProtocolError, AudioFormatError, ImageFormatError) as e:
                    await send(error_event(e))
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
            self.control(event, session)
            image = None
            if event.video_frames_base64 and session.config.video:
                image = await asyncio.to_thread(_decode_frame, event.video_frames_base64[-1], s)
            if event.audio_base64:
                samples = decode_f32_base64(event.audio_base64, max_samples=int(s.max_append_s * 16000))
                session.push_audio(samples, image)
            elif image is not None:
                session.push_frame(image)
        elif isinstance(event, SessionInit):
            raise ProtocolError("The session is already initialised.", code="already_initialized")
        elif isinstance(event, WebRtcOffer):
            raise ProtocolError("webrtc.offer belongs on /v1/realtime?transport=webrtc (docs/webrtc.md).")
        else:
            self.control(event, session)


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
