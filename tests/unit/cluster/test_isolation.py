"""Cluster mode stays optional: the single-process server never imports Ray, and layers hold."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.unit.test_layering import imported_modules

PACKAGE = Path(__file__).resolve().parents[3] / "omni_server"


def test_the_normal_server_does_not_import_ray() -> None:
    """Importing the app, the entry point and the session layer leaves Ray unloaded (make run needs no Ray)."""
    code = (
        "import sys, omni_server.app, omni_server.__main__, omni_server.session.manager;"
        "assert 'ray' not in sys.modules, 'ray imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PACKAGE.parent)


def test_cluster_modules_stay_off_the_transport() -> None:
    """The cluster package never reaches into sockets or WebRTC; only the gateway knows the session layer."""
    for path in (PACKAGE / "cluster").glob("*.py"):
        names = imported_modules(path)
        assert not any(n.startswith(("websockets", "aiortc", "omni_server.transport")) for n in names), path.name
        if path.name != "gateway.py":
            assert not any(n.startswith("omni_server.session") for n in names), path.name
