"""The WebRTC media path: signalling over the realtime WebSocket, media on tracks, events on a data channel.

`/v1/realtime?transport=webrtc&mode=audio|video` (token as for the WebSocket API) is the call's
signalling socket and lifeline:

    server  webrtc.config        {ice_servers}          (the page builds its RTCPeerConnection with these)
    server  session.queued*  →  session.queue_done       (admission, exactly as on the WebSocket API)
    client  session.init {payload}  and  webrtc.offer {sdp}   (either order; non-trickle: all candidates)
    server  webrtc.answer        {sdp}
    ...     the client's data channel opens: from here every session event travels on it
    server  session.closed       {session_id, reason}   (on this socket, which then closes)

The client's microphone track is resampled to 16 kHz mono and fed to the same `CallSession` the
WebSocket API uses; its camera track gives the session one frame a second; the reply plays on a
`ReplyAudioTrack`, so `response.output_audio.delta` events are not sent. The data channel carries
the rest of the vocabulary both ways (`session.created`, `input.*`, `response.*`, `error`;
`session.close`, `input.commit`, `input.append {force_listen}`, `client.stats`).

On a loopback server (`--host 127.0.0.1`) ICE is kept on loopback: aioice gathers only 127.0.0.1 and
the offer's other candidates are dropped. ICE servers come from `--ice-server`; none by default.

Must not import: torch, the engine's models.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aioice.ice
from aiortc import RTCConfiguration, RTCDataChannel, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from omni_server.engine.base import EngineInfo
from omni_server.errors import OmniError, ProtocolError, SessionEnded
from omni_server.media.pcm import AudioFormatError
from omni_server.metrics import ServerMetrics
from omni_server.protocol import (
    Error,
    InputAppend,
    Send,
    ServerEvent,
    SessionClose,
    SessionInit,
    WebRtcAnswer,
    WebRtcConfig,
    WebRtcOffer,
    decode_client_event,
    encode,
)
from omni_server.session.manager import SessionManager
from omni_server.session.session import CallSession
from omni_server.transport.calls import CallEndpoint, error_event, sender
from omni_server.transport.tracks import ReplyAudioTrack, receive_audio, receive_video

logger = logging.getLogger(__name__)
SIGNAL_TIMEOUT_S = 30.0
MAX_CHANNEL_BUFFER_BYTES = 4 * 1024 * 1024  # a client that stops reading its data channel is gone
_LOOPBACK_HOSTS = ("localhost",)


@dataclass(frozen=True)
class IceServer:
    """One `--ice-server`: `stun:HOST:PORT` or `turn:USER:CREDENTIAL@HOST:PORT[?transport=tcp]`."""

    url: str
    username: str | None = None
    credential: str | None = None

    @classmethod
    def parse(cls, text: str) -> IceServer:
        scheme, _, rest = text.partition(":")
        userinfo, at, address = rest.rpartition("@")
        if not at:
            return cls(url=text)
        username, colon, credential = userinfo.partition(":")
        if not colon or not username:
            raise ValueError(f"{scheme}: credentials must be USER:CREDENTIAL@, got {text!r}")
        return cls(url=f"{scheme}:{address}", username=username, credential=credential)

    def for_aiortc(self) -> RTCIceServer:
        return RTCIceServer(urls=self.url, username=self.username, credential=self.credential)

    def for_page(self) -> dict[str, str]:
        """As the browser's `RTCIceServer` dictionary."""
        entry = {"urls": self.url}
        if self.username is not None and self.credential is not None:
            entry |= {"username": self.username, "credential": self.credential}
        return entry


def is_loopback(host: str) -> bool:
    if host in _LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def keep_ice_on_loopback() -> None:
    """Make aioice gather host candidates on 127.0.0.1 only (it skips loopback by default).

    aioice reads this module-level function at every gathering, so replacing it is its one seam; it
    changes every peer connection of this process, which is what a loopback-bound server wants."""
    aioice.ice.get_host_addresses = _loopback_addresses


def _loopback_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    return ["127.0.0.1"] if use_ipv4 else []


def loopback_candidates_only(sdp: str) -> str:
    """Drop an offer's candidates that are not on loopback (LAN addresses, mDNS `.local` names)."""
    kept = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            parts = line.split()
            if len(parts) < 5 or not is_loopback(parts[4]):
                continue
        kept.append(line)
    return "\r\n".join(kept) + "\r\n"


class EventChannel:
    """Server events on the call's data channel; `send` is the session's `Send`."""

    def __init__(self) -> None:
        self.channel: RTCDataChannel | None = None
        self.opened = asyncio.Event()

    def attach(self, channel: RTCDataChannel) -> None:
        if self.channel is not None:
            return  # one event channel per call; others are ignored
        self.channel = channel
        if channel.readyState == "open":
            self.opened.set()
        channel.on("open", self.opened.set)

    async def send(self, event: ServerEvent) -> None:
        self.send_now(event)

    def send_now(self, event: ServerEvent) -> None:
        channel = self.channel
        if channel is None or channel.readyState != "open":
            raise SessionEnded("The client's data channel closed.", code="disconnected")
        if channel.bufferedAmount > MAX_CHANNEL_BUFFER_BYTES:
            raise SessionEnded("The client stopped reading its events.", code="disconnected")
        channel.send(encode(event))


class WebRtcEndpoint(CallEndpoint):
    """Serves one WebRTC call per signalling WebSocket given to `handle`."""

    transport = "webrtc"

    def __init__(self, manager: SessionManager, engine_info: EngineInfo, metrics: ServerMetrics | None = None) -> None:
        super().__init__(manager, engine_info, metrics)
        self.ice_servers = [IceServer.parse(url) for url in self.settings.ice_server]
        if is_loopback(self.settings.host):
            keep_ice_on_loopback()

    async def handle(self, ws: ServerConnection) -> None:
        signal = self.metrics.observe(sender(ws))  # the signalling socket's events, as the WebSocket API sends them
        query = parse_qs(urlsplit(ws.request.path if ws.request else "").query)
        mode = query.get("mode", ["audio"])[0]
        if mode not in ("audio", "video"):
            await signal(Error("invalid_request", "mode must be audio or video."))
            await ws.close(1008, "bad mode")
            return
        with contextlib.suppress(SessionEnded):
            await signal(WebRtcConfig(ice_servers=[s.for_page() for s in self.ice_servers]))
            await self.admit(ws, signal, lambda call_id: self._serve(ws, signal, call_id, video=mode == "video"))

    async def _serve(self, ws: ServerConnection, signal: Send, call_id: str, *, video: bool) -> str:
        init, offer = await self._wait_for_offer(ws, signal)
        try:
            config = await self.configure(ws, init, video=video)
        except (OmniError, AudioFormatError) as e:
            await signal(error_event(e))
            return "error"
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[s.for_aiortc() for s in self.ice_servers]))
        try:
            return await self._call(ws, signal, pc, call_id, config, offer)
        finally:
            await pc.close()

    async def _call(
        self, ws: ServerConnection, signal: Send, pc: RTCPeerConnection, call_id: str, config: Any, offer: WebRtcOffer
    ) -> str:
        events = EventChannel()
        pc.on("datachannel", events.attach)
        reply_track = ReplyAudioTrack()
        sdp = loopback_candidates_only(offer.sdp) if is_loopback(self.settings.host) else offer.sdp
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except ValueError as e:
            raise ProtocolError(f"The WebRTC offer is not valid SDP ({e}).", code="invalid_sdp") from e
        receivers = {t.kind: t.receiver.track for t in pc.getTransceivers() if t.receiver.track is not None}
        if "audio" not in receivers or pc.sctp is None:
            raise ProtocolError(
                "The WebRTC offer must carry a microphone track and a data channel.", code="invalid_sdp"
            )
        pc.addTrack(reply_track)
        await pc.setLocalDescription(await pc.createAnswer())
        await signal(WebRtcAnswer(sdp=pc.localDescription.sdp))
        await self._until_connected(ws, pc, events)

        send = self.metrics.observe(events.send)
        session = await self.open(call_id, config, send, output_sample_rate=48000, audio_sink=reply_track)
        if session is None:
            return "error"
        assert events.channel is not None
        events.channel.on("message", lambda raw: self._on_client_event(raw, session, events))
        events.channel.on("close", lambda: session.close("disconnected"))

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                session.close("disconnected")

        async def image(picture: Any) -> None:
            session.push_frame(picture)

        def audio(samples: Any) -> None:
            try:
                session.push_audio(samples)
            except ProtocolError as e:  # far ahead of the model: this piece is dropped, the call goes on
                with contextlib.suppress(SessionEnded):
                    events.send_now(Error.of(e))

        async with asyncio.TaskGroup() as media:
            tasks = [
                media.create_task(receive_audio(receivers["audio"], audio), name=f"{call_id}-mic"),
                media.create_task(self._watch_signalling(ws, session, events), name=f"{call_id}-signal"),
            ]
            if "video" in receivers:
                on_image = image if config.video else None
                pixels = self.settings.max_frame_pixels
                drain = receive_video(receivers["video"], on_image, max_pixels=pixels)
                tasks.append(media.create_task(drain, name=f"{call_id}-camera"))
            try:
                return await session.run()
            finally:
                for task in tasks:
                    task.cancel()

    async def _until_connected(self, ws: ServerConnection, pc: RTCPeerConnection, events: EventChannel) -> None:
        """Wait for the data channel, bounded by `--webrtc-connect-timeout-s` and by what happens meanwhile:
        ICE failing ends the wait at once, and so does the caller hanging up (a page that gave up on WebRTC
        closes this socket and calls again over the WebSocket: its slot must not stay taken)."""
        ice_failed = asyncio.Event()

        @pc.on("iceconnectionstatechange")
        def on_ice() -> None:
            if pc.iceConnectionState == "failed":
                ice_failed.set()

        hung_up: asyncio.Future[None] = asyncio.ensure_future(ws.wait_closed())
        waits: list[asyncio.Future[Any]] = [
            asyncio.ensure_future(events.opened.wait()),
            asyncio.ensure_future(ice_failed.wait()),
            hung_up,
        ]
        try:
            timeout_s = self.settings.webrtc_connect_timeout_s
            await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        if events.opened.is_set():
            return
        if hung_up.done() and not hung_up.cancelled():
            raise SessionEnded("The caller left before WebRTC connected.", code="disconnected")
        raise ProtocolError(
            "WebRTC could not connect (no route between the browser and the server).", code="webrtc_failed"
        )

    async def _wait_for_offer(self, ws: ServerConnection, signal: Send) -> tuple[SessionInit, WebRtcOffer]:
        """Both `session.init` and `webrtc.offer`, in either order; a bad frame gets an error."""
        init: SessionInit | None = None
        offer: WebRtcOffer | None = None
        while init is None or offer is None:
            try:
                async with asyncio.timeout(SIGNAL_TIMEOUT_S):
                    raw = await ws.recv()
            except TimeoutError:
                raise ProtocolError("No session.init and webrtc.offer arrived in time.", code="timeout") from None
            try:
                event = decode_client_event(raw, max_bytes=self.settings.max_message_bytes)
            except ProtocolError as e:
                await signal(Error.of(e))
                continue
            if isinstance(event, SessionInit):
                init = event
            elif isinstance(event, WebRtcOffer):
                offer = event
            elif isinstance(event, SessionClose):
                raise SessionEnded("The client left before the call started.", code="disconnected")
            else:
                await signal(Error("not_initialized", "Send session.init and webrtc.offer first."))
        return init, offer

    async def _watch_signalling(self, ws: ServerConnection, session: CallSession, events: EventChannel) -> None:
        """The signalling socket stays open for the call; control events are accepted on it too."""
        try:
            async for raw in ws:
                self._on_client_event(raw, session, events)
        except ConnectionClosed:
            pass
        session.close("disconnected")

    def _on_client_event(self, raw: str | bytes, session: CallSession, events: EventChannel) -> None:
        """One client event during the call; a bad one gets an `error` on the data channel."""
        try:
            event = decode_client_event(raw, max_bytes=self.settings.max_message_bytes)
            if isinstance(event, InputAppend) and (event.audio_base64 or event.video_frames_base64):
                raise ProtocolError("On a WebRTC call, audio and video travel on the media tracks.")
            if not self.control(event, session):
                raise ProtocolError(
                    f"{type(event).__name__} is not accepted during a call.", code="already_initialized"
                )
        except ProtocolError as e:
            with contextlib.suppress(SessionEnded):
                events.send_now(Error.of(e))
