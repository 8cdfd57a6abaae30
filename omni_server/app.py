"""The server: one https/wss port serving the page, the realtime API, and health checks.

`OmniServer` wires the parts (engine worker, VAD model, session manager, endpoint) and owns their
life: `async with OmniServer(settings, engine) as server:` serves until the block ends, then stops
admitting, ends every call with `server_shutdown`, and joins the engine thread. Given `RemoteEngines`
instead of a loaded `Engine` (cluster mode), the calls go to engine replicas elsewhere.

Must not import: torch (the engine arrives already loaded).
"""

from __future__ import annotations

import asyncio
import http
import logging
import secrets
import ssl
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from omni_server.config import Settings
from omni_server.engine.base import Engine, EngineInfo
from omni_server.engine.client import EngineClient
from omni_server.engine.worker import EngineWorker
from omni_server.library.identity import Identity
from omni_server.media.vad import SileroVadModel
from omni_server.protocol import SUBPROTOCOL
from omni_server.session.manager import SessionManager
from omni_server.transport import http as web
from omni_server.transport.library import LIBRARY_PATH, LIBRARY_SUBPROTOCOL, LibraryEndpoint
from omni_server.transport.tls import server_context
from omni_server.transport.webrtc import WebRtcEndpoint
from omni_server.transport.websocket import REALTIME_PATH, RealtimeEndpoint

logger = logging.getLogger(__name__)
SHUTDOWN_GRACE_S = 5.0


class RemoteEngines(Protocol):
    """Engines that run outside this process (the Ray Serve cluster): they make the session manager."""

    @property
    def info(self) -> EngineInfo: ...

    def session_manager(self, settings: Settings, vad_model: SileroVadModel) -> SessionManager: ...


class OmniServer:
    """Everything one server process runs, as an async context manager."""

    def __init__(self, settings: Settings, engine: Engine | RemoteEngines) -> None:
        self.settings = settings
        self.engine = engine
        self.token = None if settings.no_auth else (settings.token or secrets.token_urlsafe(24))
        if isinstance(engine, Engine):
            self.manager = SessionManager(settings, EngineWorker(engine), SileroVadModel())
        else:
            self.manager = engine.session_manager(settings, SileroVadModel())
        self.worker: EngineClient[Any] = self.manager.worker
        self.endpoint = RealtimeEndpoint(self.manager, engine.info)
        self.webrtc = WebRtcEndpoint(self.manager, engine.info)
        self.library = LibraryEndpoint(self.manager, Identity(Path(settings.data_dir)))
        self.endpoint.identify = self.webrtc.identify = self.library.identity.user_of
        self.static = web.StaticFiles(settings.web_root)
        self.ready = False
        self.cert_path: Path | None = None
        self._server: Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def url(self, host: str = "localhost", *, with_token: bool = True) -> str:
        scheme = "https" if self.settings.tls else "http"
        query = f"/?token={self.token}" if with_token and self.token else "/"
        return f"{scheme}://{host}:{self.port}{query}"

    async def __aenter__(self) -> OmniServer:
        context: ssl.SSLContext | None = None
        if self.settings.tls:
            context, self.cert_path = server_context(self.settings.cert, self.settings.key, self.settings.ssl_dir)
        self._server = await serve(
            self._handle,
            self.settings.host,
            self.settings.port,
            ssl=context,
            process_request=self._process_request,
            subprotocols=[SUBPROTOCOL, LIBRARY_SUBPROTOCOL],  # type: ignore[list-item]
            max_size=self.settings.max_message_bytes,
            server_header="omni_server",
        )
        if self.settings.warm_up:
            await self.worker.warm_up()
        self.ready = True
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.shutdown()

    async def shutdown(self) -> None:
        """Stop admitting, end every call with `server_shutdown`, wait a bounded time, stop the engine."""
        self.ready = False
        self.manager.admission.close()
        for session in list(self.manager.sessions.values()):
            session.close("server_shutdown")
        if self._server is not None:
            self._server.close(close_connections=False)
            try:
                await asyncio.wait_for(self._server.wait_closed(), SHUTDOWN_GRACE_S)
            except TimeoutError:
                logger.warning("calls did not finish within %.0f s of shutdown; closing them", SHUTDOWN_GRACE_S)
                self._server.close(close_connections=True)
                await self._server.wait_closed()
        await asyncio.to_thread(self.worker.close)

    async def _handle(self, ws: ServerConnection) -> None:
        target = urlsplit(ws.request.path if ws.request else "")
        if target.path == LIBRARY_PATH:
            await self.library.handle(ws)
        elif parse_qs(target.query).get("transport") == ["webrtc"]:
            await self.webrtc.handle(ws)  # WebRTC signalling; media on tracks (docs/webrtc.md)
        else:
            await self.endpoint.handle(ws)

    async def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == "/healthz":
            return web.text(http.HTTPStatus.OK, "ok")
        if path == "/readyz":
            if self.ready:
                return web.text(http.HTTPStatus.OK, "ready")
            return web.text(http.HTTPStatus.SERVICE_UNAVAILABLE, "starting: the model is loading")
        login = web.token_login(request, self.token)
        if login is not None:
            return login
        if not web.token_ok(self.token, web.presented_token(request)):
            return web.text(http.HTTPStatus.UNAUTHORIZED, "A token is required: open the URL the server printed.")
        if path == REALTIME_PATH:
            if not self.ready:
                return web.text(http.HTTPStatus.SERVICE_UNAVAILABLE, "starting: the model is loading")
            return None  # go on with the WebSocket handshake
        if path == LIBRARY_PATH or request.headers.get("Upgrade", "").lower() != "websocket":
            return self.library.route(request, path, self.static.get)  # voice library, or the page
        return web.text(http.HTTPStatus.NOT_FOUND, f"The realtime API is at {REALTIME_PATH}.")
