"""`python -m omni_server`: listen at once, load the engine in the background, stop cleanly on SIGINT/SIGTERM.

Start-up order: settings (printed, token masked), then the port opens (`/healthz` answers, `/readyz`
says "starting"), then the model loads and warms up (`/readyz` says "ready"). A load failure exits
with its plain-words message. The first SIGINT/SIGTERM stops admitting, ends every call with
`server_shutdown` (replies finish their current chunk) and exits within `shutdown_grace_s` plus the
engine thread's join; a second one exits at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import functools
import logging
import signal
import ssl
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from omni_server.app import EngineLoader, OmniServer, RemoteEngines
from omni_server.config import Settings, add_settings_arguments, load_settings
from omni_server.engine.loader import load_engine
from omni_server.errors import EngineError
from omni_server.logs import setup_logging
from omni_server.transport.udp_ports import loop_factory

logger = logging.getLogger("omni_server")


async def serve_forever(settings: Settings) -> None:
    if settings.cluster:
        from omni_server.cluster.launch import cluster_engines  # Ray is imported in cluster mode only

        async with cluster_engines(settings) as engines:
            await _serve(settings, engines)
    else:
        await _serve(settings, functools.partial(load_engine, settings))


async def _serve(settings: Settings, engine: EngineLoader | RemoteEngines) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        logger.info("%s: shutting down (send it again to exit at once)", sig.name)
        stop.set()
        for s in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(s)  # a second signal gets Python's default: exit now

    async with contextlib.AsyncExitStack() as stack:
        try:
            server = await stack.enter_async_context(OmniServer(settings, engine))
        except OSError as e:
            raise SystemExit(listen_failure(e, settings)) from e
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        if server.token is None:
            logger.warning("--no-auth: ANYONE who can reach port %d can use this server and its model", server.port)
        logger.info("listening on port %d; loading the model (/readyz says when it is ready)", server.port)
        loading = asyncio.create_task(server.wait_ready(), name="wait-ready")
        stopping = asyncio.create_task(stop.wait(), name="wait-stop")
        try:
            await asyncio.wait([loading, stopping], return_when=asyncio.FIRST_COMPLETED)
            if not stopping.done():
                loading.result()
                _print_ready(server)
                await stopping
        except EngineError as e:
            raise SystemExit(f"Cannot start the engine: {e.message}") from e
        finally:
            for task in (loading, stopping):
                task.cancel()
    logger.info("stopped")


def listen_failure(e: OSError, settings: Settings) -> str:
    """What to tell a person when the port cannot be opened (or the certificate read), instead of a traceback."""
    where = f"{settings.host}:{settings.port}"
    if e.errno == errno.EADDRINUSE:
        return (
            f"Cannot listen on {where}: the port is already in use (another omni_server, or another program). "
            f'Stop that program, or choose another port: make run ARGS="--port {settings.port + 1}" '
            f"(or OMNI_PORT={settings.port + 1})."
        )
    if e.errno == errno.EACCES:
        return f"Cannot listen on {where}: ports below 1024 need administrator rights. Use --port 8443 or another above 1024."
    if e.errno == errno.EADDRNOTAVAIL:
        return f"Cannot listen on {where}: {settings.host} is not an address of this machine. Use --host 0.0.0.0 or one of its addresses."
    if settings.tls and (settings.cert or isinstance(e, ssl.SSLError)):
        return f"Cannot use the TLS certificate ({settings.cert or settings.ssl_dir}): {e.strerror or e}."
    return f"Cannot listen on {where}: {e.strerror or e}."


def _print_ready(server: OmniServer) -> None:
    print(f"\n  omni_server is ready ({server.worker.info.banner()})", flush=True)
    print(f"  Open: {server.url()}\n", flush=True)
    if server.cert_path is not None and server.settings.cert is None:
        print(f"  Self-signed certificate: {server.cert_path} (trust it, or accept the browser warning once)\n")


def doctor(argv: Sequence[str]) -> int:
    """`python -m omni_server doctor [--model M] [--device D] [--dtype T]`: what stops the real model here."""
    from omni_server.engine.doctor import main as run_doctor
    from omni_server.engine.minicpmo import DEFAULT_MODEL

    parser = argparse.ArgumentParser(prog="python -m omni_server doctor", description=doctor.__doc__)
    add_settings_arguments(parser, ("model", "device", "dtype", "config"))
    settings = load_settings(argv, parser=parser)
    return run_doctor(settings.model or DEFAULT_MODEL, settings.device, settings.dtype)


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["doctor"]:
        raise SystemExit(doctor(args[1:]))
    settings = load_settings(args)
    setup_logging(settings.log_level, json_lines=settings.log_json)
    for line in settings.describe():
        logger.info("setting %s", line)
    run(serve_forever(settings), settings.event_loop, settings.webrtc_ports)


def run(main: Coroutine[Any, Any, None], event_loop: str, webrtc_ports: str = "") -> None:
    """Run the server on uvloop (`event_loop` uvloop, or auto where uvloop is installed) or asyncio's loop,
    keeping WebRTC's UDP ports to `webrtc_ports` when given (transport/udp_ports.py)."""
    base: type[asyncio.AbstractEventLoop] | None = None
    if event_loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if event_loop == "uvloop":
                raise SystemExit("--event-loop uvloop: uvloop is not installed (pip install uvloop)") from None
        else:
            logger.info("event loop: uvloop")
            base = uvloop.Loop
    with asyncio.Runner(loop_factory=loop_factory(webrtc_ports, base)) as runner:
        runner.run(main)


if __name__ == "__main__":
    main()
