"""What both media paths share: a call's life as its WebSocket sees it.

The WebSocket API (`websocket.py`) and WebRTC (`webrtc.py`) differ only in how media and events travel.
`CallEndpoint` holds the rest, so both behave the same: admission (`session.queued`* →
`session.queue_done`, refusals), the call's settings resolved for the caller's identity, the session
started and announced (`session.created`), the control events a client may send during a call, and
the end (`session.closed` with its reason, whatever happened).

A call is one task group: the socket's reader (`reader.py`, from the first frame on), the queue
wait, the set-up, then the session with the transport's own loops. Whatever fails in it ends that
call at once, and only that call: `admit` is the boundary where a failure is logged once and told
to the client.

Must not import: torch, aiortc, the engine's models.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from omni_server.engine.base import EngineInfo
from omni_server.errors import OmniError, ProtocolError, SessionEnded, SessionRefused
from omni_server.metrics import ServerMetrics
from omni_server.protocol import (
    ClientStats,
    Error,
    InputAppend,
    InputCommit,
    InputText,
    Send,
    ServerEvent,
    SessionClose,
    SessionClosed,
    SessionCreated,
    SessionInit,
    SessionQueued,
    SessionQueueDone,
    encode,
)
from omni_server.session.call_config import CallConfig
from omni_server.session.manager import SessionManager
from omni_server.session.reply import AudioSink
from omni_server.session.session import CallSession, describe_engine
from omni_server.transport.guard import SlowClient
from omni_server.transport.reader import CallReader

logger = logging.getLogger(__name__)
Identify = Callable[[str, Iterable[tuple[str, str]]], str | None]  # (request path, headers) -> user id


def anonymous(path: str, headers: Iterable[tuple[str, str]]) -> str | None:
    return None


class CallEndpoint:
    """The parts of serving a call that do not depend on the media path."""

    transport = ""

    def __init__(self, manager: SessionManager, engine_info: EngineInfo, metrics: ServerMetrics | None = None) -> None:
        self.manager = manager
        self.engine_info = engine_info
        self.settings = manager.settings
        self.metrics = metrics or ServerMetrics()
        self.identify: Identify = anonymous

    async def admit(
        self, ws: ServerConnection, send: Send, serve: Callable[[str, CallReader], Awaitable[str]], *, offer: bool
    ) -> None:
        """Queue for a slot, run `serve(call_id, reader)` → close reason, and always end with `session.closed`.

        The socket is read from the start (`offer`: the set-up waits for a WebRTC offer too)."""
        call_id = self.manager.new_call_id()
        s = self.settings
        reader = CallReader(ws, send, max_bytes=s.max_message_bytes, offer=offer, setup_timeout_s=s.init_timeout_s)
        reason = "error"
        try:
            async with asyncio.TaskGroup() as call:
                reading = call.create_task(reader.read_loop(), name=f"{call_id}-reader")
                try:
                    async with self.manager.slot(queued(send)):
                        await send(SessionQueueDone())
                        reason = await serve(call_id, reader)
                finally:
                    reading.cancel()
        # Several may be in one group (the reader and the set-up can fail together); the last clause run wins.
        except* (ConnectionClosed, SessionEnded) as group:
            ended = group.exceptions[0]
            reason = ended.code if isinstance(ended, SessionEnded) else "disconnected"
        except* SessionRefused as group:
            refused = group.exceptions[0]
            await quietly(send(Error.of(refused)))
            reason = refused.code if isinstance(refused, SessionRefused) else "error"
        except* ProtocolError as group:  # the call could not be set up (no session.init in time, a bad offer)
            await quietly(send(Error.of(group.exceptions[0])))
            reason = "error"
        except* Exception as group:  # the boundary of one call: log once, tell the client, end only this call
            failure = group.exceptions[0]
            logger.error("call failed", exc_info=failure, extra={"session_id": call_id, "transport": self.transport})
            await quietly(send(Error.of(failure)))
            reason = "error"
        finally:
            self.manager.forget(call_id)
            await quietly(send(SessionClosed(reason=reason, session_id=call_id)))
            await close_reading(ws)
            logger.info("call ended", extra={"session_id": call_id, "reason": reason, "transport": self.transport})

    async def configure(self, ws: ServerConnection, init: SessionInit, *, video: bool) -> CallConfig:
        """`session.init` resolved against the settings, for the caller's identity (voices are per person)."""
        user = self.identify(ws.request.path, ws.request.headers.raw_items()) if ws.request else None
        return await self.manager.call_config(init, video=video, user=user)

    async def open(
        self, call_id: str, config: CallConfig, send: Send, *, output_sample_rate: int, audio_sink: AudioSink | None
    ) -> CallSession | None:
        """Make and start the call's session, then say `session.created`; None (after an `error`) if it failed."""
        session = self.manager.create(call_id, config, send)
        session.audio_sink = audio_sink
        started = False
        try:
            await session.start()
            started = True
        except OmniError as e:
            await send(Error.of(e))
            return None
        finally:
            if not started:  # refused, failed, or cancelled (the client left): the conversation is freed
                await session.release()
        created = SessionCreated(
            session_id=call_id,
            mode="video" if config.video else "audio",
            transport=self.transport,
            conversation_mode=config.conversation_mode,
            language=config.language,
            engine=describe_engine(self.engine_info),
            input_sample_rate=16000,
            output_sample_rate=output_sample_rate,
        )
        await send(created)
        logger.info("call started", extra={"session_id": call_id, "transport": self.transport})
        return session

    def control(self, event: object, session: CallSession) -> bool:
        """Apply a control event (listen now, commit, a typed message, hang up, playback stats); False if it is not one."""
        if isinstance(event, InputAppend) and event.force_listen:
            session.force_listen()
        elif isinstance(event, InputCommit):
            session.commit()
        elif isinstance(event, InputText):
            session.text_turn(event.text)
        elif isinstance(event, SessionClose):
            session.close("stopped")
        elif isinstance(event, ClientStats):
            # A running total that only grows: a client alternating high and low reports adds nothing.
            self.metrics.client_underruns(session.client_underruns, event.underruns)
            session.client_underruns = max(session.client_underruns, event.underruns)
        else:
            return False
        return True


def sender(ws: ServerConnection) -> Send:
    """`send(event)` on a WebSocket; a vanished or stalled client ends the call."""

    async def send(event: ServerEvent) -> None:
        try:
            await ws.send(encode(event))
        except SlowClient as e:
            raise SessionEnded("The client stopped reading.", code="slow_client") from e
        except ConnectionClosed as e:
            raise SessionEnded("The client disconnected.", code="disconnected") from e

    return send


def queued(send: Send) -> Callable[[int, float, int], Awaitable[None]]:
    async def on_queued(position: int, wait_s: float, length: int) -> None:
        await send(SessionQueued(position=position, estimated_wait_s=wait_s, queue_length=length))

    return on_queued


async def close_reading(ws: ServerConnection) -> None:
    """Close the socket, reading and dropping what the client still sends meanwhile: with a few messages
    unread websockets stops reading the socket, and would not see the client's close frame (10 s wait)."""

    async def drain() -> None:
        with contextlib.suppress(ConnectionClosed):
            async for _ in ws:
                pass

    async with asyncio.TaskGroup() as closing:
        closing.create_task(drain(), name="drain")
        await ws.close()


async def quietly(aw: Awaitable[None]) -> None:
    """Send what can still be sent to a client that may be gone."""
    with contextlib.suppress(SessionEnded):
        await aw
