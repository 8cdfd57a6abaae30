"""`python -m omni_server` says in words what stops it from listening, instead of a traceback."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from omni_server.__main__ import serve_forever
from tests.conftest import server_settings


async def test_a_busy_port_is_explained(tmp_path: Path) -> None:
    """Another program on the port: the process exits with a sentence naming the port and how to pick another."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as exited:
            await serve_forever(server_settings(tmp_path, port=port))
    message = str(exited.value.code)
    assert f"127.0.0.1:{port}" in message and "already in use" in message
    assert f"--port {port + 1}" in message
