"""A call's socket, read from its first frame to its last, in the call's task group.

Nothing a client sends may wait unread: websockets would buffer it (up to `max_queue` messages of
`max_size` each), so a caller queued for a slot, or a WebRTC call waiting for its data channel, could
hold tens of MiB of server memory. `CallReader.read_loop` therefore reads from the moment the
connection is accepted, and what it does with a frame depends on how far the call has come:

    setup      (queued, then until `setup()` has what it waits for) `session.init` and, for WebRTC,
               `webrtc.offer` are kept, the latest of each; `session.close` ends the call; anything
               else is refused with `not_initialized`.
    starting   (the call is being configured, its model conversation opened, WebRTC connected)
               input is refused with `not_initialized` (clients wait for `session.created`, as the
               SDK and the page do); `session.close` ends the call.
    call       every frame goes to the transport's handler (`start_call`).

A client that leaves, or sends `session.close`, before the call has started ends everything at once
(`SessionEnded`, which cancels the task group: the queue wait, the voice preparation, the model
conversation's start). Once the call runs, leaving closes the session, which ends in its own time
(after the chunk being made). An error inside the reader is not caught here: it fails the call's
task group, so the call ends at once rather than idling until its timeout.

Must not import: torch, aiortc, the engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from omni_server.errors import ProtocolError, SessionEnded
from omni_server.protocol import ClientEvent, Error, Send, SessionClose, SessionInit, WebRtcOffer, decode_client_event
from omni_server.session.session import CallSession

OnEvent = Callable[[ClientEvent], Awaitable[None]]  # a frame during the call; may raise ProtocolError
OnRefused = Callable[[ProtocolError], Awaitable[None]]  # tell the client why a frame was refused


class CallReader:
    """Reads one call's socket for its whole life; see the module docstring for what each phase does."""

    def __init__(
        self, ws: ServerConnection, send: Send, *, max_bytes: int, offer: bool, setup_timeout_s: float
    ) -> None:
        self._ws = ws
        self._setup_timeout_s = setup_timeout_s
        self._send = send
        self._max_bytes = max_bytes
        self._wants_offer = offer
        self.init: SessionInit | None = None
        self.offer: WebRtcOffer | None = None
        self._have_setup = asyncio.Event()
        self._starting = False
        self._session: CallSession | None = None
        self._on_event: OnEvent | None = None
        self._on_refused: OnRefused | None = None

    async def setup(self) -> tuple[SessionInit, WebRtcOffer | None]:
        """Wait (at most `setup_timeout_s`) for `session.init` (and the offer); refuse `timeout` otherwise."""
        try:
            async with asyncio.timeout(self._setup_timeout_s):
                await self._have_setup.wait()
        except TimeoutError:
            wanted = "session.init and webrtc.offer" if self._wants_offer else "session.init"
            raise ProtocolError(f"No {wanted} arrived within {self._setup_timeout_s:g} s.", code="timeout") from None
        self._starting = True
        assert self.init is not None
        return self.init, self.offer

    def start_call(self, session: CallSession, on_event: OnEvent, on_refused: OnRefused) -> None:
        """From now on every frame goes to `on_event`, and refusals to `on_refused`."""
        self._session, self._on_event, self._on_refused = session, on_event, on_refused

    async def read_loop(self) -> None:
        try:
            async for raw in self._ws:
                try:
                    event = decode_client_event(raw, max_bytes=self._max_bytes)
                    await self._route(event)
                except ProtocolError as e:
                    await self._refuse(e)
        except ConnectionClosed:
            pass
        except SessionEnded as e:  # our answer could not be sent: the client is gone or stopped reading
            self._leave(e.code)
            return
        self._leave("disconnected")

    async def _route(self, event: ClientEvent) -> None:
        if self._on_event is not None:
            await self._on_event(event)
        elif isinstance(event, SessionClose):
            raise SessionEnded("The client closed the session before it started.", code="stopped")
        elif not self._starting and isinstance(event, SessionInit):
            self.init = event  # while queued, a later one replaces an earlier one
        elif not self._starting and self._wants_offer and isinstance(event, WebRtcOffer):
            self.offer = event
        elif self._starting or self._have_setup.is_set():
            raise ProtocolError("The call is still starting: send input after session.created.", code="not_initialized")
        else:
            wanted = "session.init and webrtc.offer" if self._wants_offer else "session.init"
            raise ProtocolError(f"Send {wanted} first.", code="not_initialized")
        if self.init is not None and (self.offer is not None or not self._wants_offer):
            self._have_setup.set()

    async def _refuse(self, e: ProtocolError) -> None:
        if self._on_refused is not None:
            await self._on_refused(e)
        else:
            await self._send(Error.of(e))

    def _leave(self, reason: str) -> None:
        if self._session is None:
            raise SessionEnded("The client left before the call started.", code=reason)
        self._session.close(reason)
