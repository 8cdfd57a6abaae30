"""The realtime WebSocket API: frames in, typed events to the call, server events out.

Speaks the MiniCPM-o Realtime dialect (`/v1/realtime?mode=audio|video`, subprotocol `map.realtime`) as
the `openbmb-realtime` SDK expects: `session.queued`* → `session.queue_done` → client `session.init` →
`session.created` → `input.append`... → `response.*` → `session.closed`. A bad frame gets an `error`
event and the call goes on; nothing a client sends can end another client's call.

Must not import: torch, the engine's models.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection

from omni_server.errors import OmniError, ProtocolError, from_media
from omni_server.media.images import decode_image
from omni_server.media.pcm import decode_f32_base64, decode_pcm
from omni_server.protocol import ClientEvent, Error, InputAppend, InputAudio, Send, SessionInit, WebRtcOffer
from omni_server.session.session import CallSession
from omni_server.transport.calls import CallEndpoint, sender
from omni_server.transport.reader import CallReader

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
        serve = functools.partial(self._serve, ws, send, video=mode == "video")
        await self.admit(ws, send, serve, offer=False)

    async def _serve(self, ws: ServerConnection, send: Send, call_id: str, reader: CallReader, *, video: bool) -> str:
        init, _ = await reader.setup()
        try:
            config = await self.configure(ws, init, video=video)
        except OmniError as e:
            await send(Error.of(e))
            return "error"
        session = await self.open(call_id, config, send, output_sample_rate=24000, audio_sink=None)
        if session is None:
            return "error"
        # Every frame from here on is one of the call's: a bad one gets an `error` event and the call goes on.
        reader.start_call(session, functools.partial(self._dispatch, session=session), lambda e: send(Error.of(e)))
        return await session.run()

    async def _dispatch(self, event: ClientEvent, *, session: CallSession) -> None:
        s = self.settings
        if isinstance(event, InputAudio):  # ours: a binary message, no JSON and no base64 (docs/protocol.md)
            self._admit(session, len(event.pcm) / (4 if event.sample_format == "f32" else 2) / 16000)
            with from_media():
                samples = decode_pcm(event.pcm, event.sample_format, max_samples=int(s.max_append_s * 16000))
            session.push_audio(samples)
        elif isinstance(event, InputAppend):
            self._admit(session, _duration_s(event.audio_base64))
            self.control(event, session)
            image = None
            if event.video_frames_base64 and session.config.video:
                image = await asyncio.to_thread(_decode_frame, event.video_frames_base64[-1], s)
            if event.audio_base64:
                with from_media():
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

    def _admit(self, session: CallSession, duration_s: float) -> None:
        """Charge a piece of audio to the call's real-time budget before anything is decoded; one over
        `--max-append-s` is not charged (its decoding refuses it from its length alone)."""
        if duration_s <= self.settings.max_append_s:
            session.admit_input(duration_s)


def _duration_s(audio_base64: str) -> float:
    """The audio a base64 float32 payload holds, from its length alone."""
    return len(audio_base64) * 3 // 4 // 4 / 16000


def _decode_frame(b64: str, settings: Any) -> Any:
    import base64
    import binascii

    if len(b64) > settings.max_frame_bytes * 4 // 3 + 4:
        raise ProtocolError("Camera frame is over the size limit.", code="payload_too_large")
    try:
        data = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ProtocolError("Camera frame is not valid base64.", code="invalid_image") from e
    with from_media():
        return decode_image(data, max_bytes=settings.max_frame_bytes, max_pixels=settings.max_frame_pixels)
