"""`python -m omni_server`: load the engine, serve, print the URL, stop cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence

from omni_server.app import OmniServer, RemoteEngines
from omni_server.config import Settings, load_settings
from omni_server.engine.base import Engine
from omni_server.engine.loader import load_engine
from omni_server.errors import EngineError

logger = logging.getLogger("omni_server")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        for key in ("session_id", "reason", "dropped_tokens"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class _SessionFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        session = getattr(record, "session_id", None)
        return f"{line} [session {session}]" if session else line


def setup_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_json:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(_SessionFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler], force=True)
    for noisy in ("websockets", "aioice", "aiortc"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


async def serve_forever(settings: Settings) -> None:
    if settings.cluster:
        from omni_server.cluster.launch import cluster_engines  # Ray is imported in cluster mode only

        async with cluster_engines(settings) as engines:
            await _serve(settings, engines)
        return
    try:
        engine = await asyncio.to_thread(load_engine, settings)
    except EngineError as e:
        raise SystemExit(f"Cannot start the engine: {e.message}") from e
    await _serve(settings, engine)


async def _serve(settings: Settings, engine: Engine | RemoteEngines) -> None:
    logger.info(engine.info.banner())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with OmniServer(settings, engine) as server:
        if server.token is None:
            logger.warning("--no-auth: ANYONE who can reach port %d can use this server and its model", server.port)
        print(f"\n  omni_server is ready ({engine.info.banner()})", flush=True)
        print(f"  Open: {server.url()}\n", flush=True)
        if server.cert_path is not None and settings.cert is None:
            print(f"  Self-signed certificate: {server.cert_path} (trust it, or accept the browser warning once)\n")
        await stop.wait()
        logger.info("shutting down: ending calls")


def main(argv: Sequence[str] | None = None) -> None:
    settings = load_settings(argv)
    setup_logging(settings)
    for line in settings.describe():
        logger.debug("setting %s", line)
    asyncio.run(serve_forever(settings))


if __name__ == "__main__":
    main()
