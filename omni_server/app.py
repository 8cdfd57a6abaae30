"""The server: one https/wss port serving the page, the realtime API (WebSocket and WebRTC), the voice
library, metrics, and health checks.

`OmniServer` wires the parts (engine worker, VAD model, session manager, endpoints, metrics, connection
guard) and owns their life: `async with OmniServer(settings, engine) as server:` serves until the block
ends, then stops admitting, ends every call with `server_shutdown`, and joins the engine thread.

`engine` is a loaded `Engine`, a loader (a callable returning one, run on a thread), or `RemoteEngines`
(cluster mode: the calls go to engine replicas elsewhere). With a loader the server listens at once
and loads (and warms up) in the background: `/healthz` answers, `/readyz` says 503 "starting" until
the model is ready, and realtime callers are held with `session.queued` (reason `starting`);
`await server.wait_ready()` waits for it. Otherwise entering the block waits for the warm-up, as
tests expect.

Must not import: torch (a loader may; it runs on a thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http
import logging
import secrets
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from omni_server.config import Settings
from omni_server.engine.base import Engine, EngineInfo
from omni_server.engine.client import EngineClient
from omni_server.engine.worker import EngineWorker
from omni_server.errors import EngineError
from omni_server.library.choice import store_for
from omni_server.library.identity import Identity
from omni_server.media.vad import SileroVadModel
from omni_server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from omni_server.metrics import ServerMetrics
from omni_server.protocol import SUBPROTOCOL, Send, ServerEvent, encode
from omni_server.session.manager import SessionManager
from omni_server.transport import http as web
from omni_server.transport import starting
from omni_server.transport.guard import ConnectionGuard, GuardedConnection
from omni_server.transport.library import LIBRARY_PATH, LIBRARY_SUBPROTOCOL, LibraryEndpoint
from omni_server.transport.tls import server_context
from omni_server.transport.webrtc import WebRtcEndpoint
from omni_server.transport.websocket import REALTIME_PATH, RealtimeEndpoint

logger = logging.getLogger(__name__)
EngineLoader = Callable[[], Engine]


class RemoteEngines(Protocol):
    """Engines that run outside this process (the Ray Serve cluster): they make the session manager."""

    @property
    def info(self) -> EngineInfo: ...

    def session_manager(self, settings: Settings, vad_model: SileroVadModel) -> SessionManager: ...


class OmniServer:
    """Everything one server process runs, as an async context manager."""

    # Built once the engine is loaded (before that, realtime callers are held and never reach them).
    worker: EngineClient[Any]
    manager: SessionManager
    endpoint: RealtimeEndpoint
    webrtc: WebRtcEndpoint

    def __init__(self, settings: Settings, engine: Engine | EngineLoader | RemoteEngines) -> None:
        self.settings = settings
        self._preloaded = not callable(engine)
        self._engine = engine
        self.token = None if settings.no_auth else (settings.token or secrets.token_urlsafe(24))
        self.metrics = ServerMetrics()
        origins = settings.allow_origin.split(",")
        self.guard = ConnectionGuard(self.metrics, max_per_ip=settings.max_connections_per_ip, allowed_origins=origins)
        self.static = web.StaticFiles(settings.web_root)
        # The library's reads (lists, previews, the page's identity cookie) work while the model loads.
        self.library = LibraryEndpoint(settings, Identity(Path(settings.data_dir)), store_for(settings))
        self.state = "starting"  # starting -> ready | failed; stopping at shutdown
        self.failure: str | None = None
        self._settled = asyncio.Event()  # loading finished, failed, or was abandoned
        self._load_task: asyncio.Task[None] | None = None
        self.cert_path: Path | None = None
        self._server: Server | None = None

    @property
    def ready(self) -> bool:
        return self.state == "ready"

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
        connection = functools.partial(
            GuardedConnection, metrics=self.metrics, send_timeout_s=self.settings.send_timeout_s
        )
        self._server = await serve(
            self._handle,
            self.settings.host,
            self.settings.port,
            ssl=context,
            process_request=self._process_request,
            subprotocols=[SUBPROTOCOL, LIBRARY_SUBPROTOCOL],  # type: ignore[list-item]
            max_size=self.settings.max_message_bytes,
            server_header="omni_server",
            create_connection=connection,  # type: ignore[arg-type]
        )
        self._load_task = asyncio.create_task(self._load(), name="engine-load")
        if self._preloaded:
            await self.wait_ready()
        return self

    async def wait_ready(self) -> None:
        """Wait until the model is loaded and warmed up; raises `EngineError` if that failed."""
        await self._settled.wait()
        if self.state != "ready":
            raise EngineError(self.failure or "The server stopped before the model was ready.")

    async def _load(self) -> None:
        try:
            self.manager = await self._session_manager()
            self.worker = self.manager.worker
            info = self.worker.info
            self.endpoint = RealtimeEndpoint(self.manager, info, self.metrics)
            self.webrtc = WebRtcEndpoint(self.manager, info, self.metrics)
            self.endpoint.identify = self.webrtc.identify = self.library.identity.user_of
            self.library.attach(self.manager)
            self.metrics.track_calls(self.manager.admission)
            if self.settings.warm_up:
                await self.worker.warm_up()
        except EngineError as e:
            self.state, self.failure = "failed", e.message
            logger.error("the engine could not be loaded: %s", e.message)
        except Exception:  # the boundary of the background load: log it once, say "failed" on /readyz
            self.state, self.failure = "failed", "The engine failed to load; the server log says why."
            logger.exception("the engine could not be loaded")
        else:
            self.state = "ready"
            self.metrics.ready.set(1)
            logger.info("ready: %s", info.banner())
        finally:
            self._settled.set()

    async def _session_manager(self) -> SessionManager:
        engine = self._engine
        if isinstance(engine, Engine) or callable(engine):
            loaded = engine if isinstance(engine, Engine) else await _in_daemon_thread(engine)
            worker = EngineWorker(loaded, on_timing=self.metrics.engine_timing, on_speculation=self.metrics.speculation)
            return SessionManager(self.settings, worker, SileroVadModel())
        return engine.session_manager(self.settings, SileroVadModel())

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.shutdown()

    async def shutdown(self) -> None:
        """Stop admitting, end every call with `server_shutdown`, wait a bounded time, stop the engine."""
        loaded = self.state == "ready"
        self.state = "stopping"
        self.metrics.ready.set(0)
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()  # the loader's thread finishes on its own; nobody waits for it
            with contextlib.suppress(asyncio.CancelledError):
                await self._load_task
        self._settled.set()  # callers held while starting are told the server is stopping
        if loaded:
            self.manager.admission.close()
            for session in list(self.manager.sessions.values()):
                session.close("server_shutdown")
        if self._server is not None:
            grace_s = self.settings.shutdown_grace_s
            self._server.close(close_connections=False)
            try:
                await asyncio.wait_for(self._server.wait_closed(), grace_s)
            except TimeoutError:
                logger.warning("calls did not finish within %.1f s of shutdown; closing them", grace_s)
                self._server.close(close_connections=True)
                await self._server.wait_closed()
        if hasattr(self, "worker"):
            await asyncio.to_thread(self.worker.close)

    async def _handle(self, ws: ServerConnection) -> None:
        if not self._settled.is_set() or self.state != "ready":
            send = self.metrics.observe(_raw_sender(ws))
            try:
                await starting.hold_until_loaded(send, self._settled)
                if self.state == "stopping":
                    await starting.refuse(send, "server_shutdown", "The server is shutting down.")
                elif self.state == "failed":
                    await starting.refuse(send, "engine_error", "The server could not load its model.")
            except ConnectionClosed:
                return
            if self.state != "ready":
                await ws.close()
                return
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
            return self._readiness()
        login = web.token_login(request, self.token)
        if login is not None:
            return login
        if not web.token_ok(self.token, web.presented_token(request)):
            self.metrics.refuse("auth")
            return web.text(http.HTTPStatus.UNAUTHORIZED, "A token is required: open the URL the server printed.")
        if path == "/metrics":
            return web.respond(http.HTTPStatus.OK, self.metrics.exposition(), METRICS_CONTENT_TYPE)
        if path in (REALTIME_PATH, LIBRARY_PATH):
            if self.state in ("failed", "stopping") or (path == LIBRARY_PATH and not self.ready):
                return self._readiness()
            # Callers arriving while the model loads are let in and held (see transport/starting.py).
            return self.guard.check_origin(request) or self.guard.admit(ws)
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return web.text(http.HTTPStatus.NOT_FOUND, f"The realtime API is at {REALTIME_PATH}.")
        return self.library.route(request, path, self.static.get)  # voice library reads, or the page

    def _readiness(self) -> Response:
        if self.state == "ready":
            return web.text(http.HTTPStatus.OK, "ready")
        if self.state == "failed":
            return web.text(http.HTTPStatus.SERVICE_UNAVAILABLE, f"failed: {self.failure}")
        if self.state == "stopping":
            return web.text(http.HTTPStatus.SERVICE_UNAVAILABLE, "stopping")
        return web.text(http.HTTPStatus.SERVICE_UNAVAILABLE, "starting: the model is loading")


async def _in_daemon_thread(fn: EngineLoader) -> Engine:
    """Run the loader on a daemon thread: a stop during a long download must not wait for it to end
    (`asyncio.to_thread`'s executor is joined when the loop closes)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Engine] = loop.create_future()

    def settle(result: Engine | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            assert result is not None
            future.set_result(result)

    def run() -> None:
        try:
            result, error = fn(), None
        except BaseException as e:  # handed to the awaiting coroutine, which reports it
            result, error = None, e
        with contextlib.suppress(RuntimeError):  # the loop closed while loading: nobody is waiting
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name="engine-loader", daemon=True).start()
    return await future


def _raw_sender(ws: ServerConnection) -> Send:
    async def send(event: ServerEvent) -> None:
        await ws.send(encode(event))

    return send
