"""Who may open a realtime connection, and how much one connection may cost the server.

`ConnectionGuard` runs before the WebSocket handshake (from `process_request`): a browser page from
another site is refused by its `Origin` header (403), and one address may hold at most
`max_connections_per_ip` realtime connections (429); both are plain HTTP answers, so no handshake,
session or engine work is spent on them. Clients that send no `Origin` (SDKs, scripts) are not
browsers and are not subject to the origin check; the token still applies to them.

`GuardedConnection` is the server's connection class. It counts message bytes both ways, gives its
address's place back when the socket closes, and bounds what a client that stops reading can cost:
a send waits while the socket's write buffer is over websockets' `write_limit`, and a send still
waiting after `send_timeout_s` aborts the connection and raises `SlowClient`, so a stalled client
holds at most one message per sending task beyond a fixed buffer, never a growing queue. Audio is
not dropped to keep such a client going: a gap in speech is worse than a clear `slow_client` close.

Must not import: torch, the engine, omni_server.session.
"""

from __future__ import annotations

import asyncio
import http
import logging
from collections import Counter
from collections.abc import AsyncIterable, Iterable
from typing import Any, Literal, overload
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosedError
from websockets.http11 import Request, Response
from websockets.typing import Data, DataLike

from omni_server.metrics import ServerMetrics
from omni_server.transport import http as web

logger = logging.getLogger(__name__)


class SlowClient(ConnectionClosedError):
    """The client stopped reading: a send waited longer than `send_timeout_s`, so it was cut off."""


class ConnectionGuard:
    """Origin checks and per-address connection counts for realtime connections."""

    def __init__(self, metrics: ServerMetrics, *, max_per_ip: int, allowed_origins: Iterable[str] = ()) -> None:
        self.metrics = metrics
        self.max_per_ip = max_per_ip
        self.allowed_origins = frozenset(o.strip().rstrip("/").lower() for o in allowed_origins if o.strip())
        self.open: Counter[str] = Counter()

    def check_origin(self, request: Request) -> Response | None:
        """403 for a browser page whose origin is neither this server nor an allowed one."""
        origin = request.headers.get("Origin")
        if origin is None or self._origin_ok(origin, request.headers.get("Host", "")):
            return None
        self.metrics.refuse("origin")
        logger.warning("refused a connection from origin %s", origin[:200])
        return web.text(
            http.HTTPStatus.FORBIDDEN,
            "This page's origin may not use this server. Its operator can allow it with --allow-origin.",
        )

    def _origin_ok(self, origin: str, host: str) -> bool:
        origin = origin.strip().rstrip("/").lower()
        if "*" in self.allowed_origins or origin in self.allowed_origins:
            return True
        return bool(host) and urlsplit(origin).netloc == host.strip().lower()

    def admit(self, ws: ServerConnection) -> Response | None:
        """Count this connection against its address, or 429 when the address is at its limit."""
        ip = _ip(ws)
        if self.open[ip] >= self.max_per_ip:
            self.metrics.refuse("per_ip_limit")
            logger.warning("refused a connection from %s: %d open already", ip, self.open[ip])
            return web.text(
                http.HTTPStatus.TOO_MANY_REQUESTS,
                f"Too many connections from your address (at most {self.max_per_ip}). Close one and try again.",
            )
        self.open[ip] += 1
        assert isinstance(ws, GuardedConnection)  # the server's connection class (see app.py)
        ws.on_lost = lambda: self._release(ip)
        return None

    def _release(self, ip: str) -> None:
        self.open[ip] -= 1
        if self.open[ip] <= 0:
            del self.open[ip]


class GuardedConnection(ServerConnection):
    """A server connection that counts its bytes and cuts off a client that stops reading."""

    def __init__(self, *args: Any, metrics: ServerMetrics, send_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._metrics = metrics
        self._send_timeout_s = send_timeout_s
        self.on_lost: Any = None  # set by ConnectionGuard.admit: gives the address's place back

    async def send(
        self, message: DataLike | Iterable[DataLike] | AsyncIterable[DataLike], *, text: bool | None = None
    ) -> None:
        if isinstance(message, str):
            self._metrics.bytes_out.inc(len(message.encode()))
        elif isinstance(message, bytes | bytearray | memoryview):
            self._metrics.bytes_out.inc(len(message))
        try:
            async with asyncio.timeout(self._send_timeout_s):
                await super().send(message, text=text)
        except TimeoutError:
            logger.warning("a client stopped reading for %.0f s; disconnecting it", self._send_timeout_s)
            self.transport.abort()  # a close handshake would wait behind the unread data
            raise SlowClient(None, None) from None

    @overload
    async def recv(self, decode: Literal[True]) -> str: ...

    @overload
    async def recv(self, decode: Literal[False]) -> bytes: ...

    @overload
    async def recv(self, decode: bool | None = None) -> Data: ...

    async def recv(self, decode: bool | None = None) -> Data:
        message = await super().recv(decode)
        self._metrics.bytes_in.inc(len(message.encode()) if isinstance(message, str) else len(message))
        return message

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.on_lost is not None:
            self.on_lost()
            self.on_lost = None


def _ip(ws: ServerConnection) -> str:
    address = ws.remote_address
    return str(address[0]) if address else "unknown"
