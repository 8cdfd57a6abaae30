"""Imports flow one way: transport -> session -> engine; media is pure."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "omni_server"
FORBIDDEN = {
    "transport": {"torch", "transformers"},
    "session": {"torch", "transformers", "websockets", "aiortc"},
    "engine": {"websockets", "aiortc", "omni_server.session", "omni_server.transport"},
    "media": {"torch", "websockets", "aiortc", "asyncio", "omni_server.session", "omni_server.transport"},
}


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports(layer: str) -> None:
    """No module of a layer imports what that layer must not know about."""
    for path in (PACKAGE / layer).glob("*.py"):
        for name in imported_modules(path):
            for banned in FORBIDDEN[layer]:
                assert not (name == banned or name.startswith(banned + ".")), f"{path.name} imports {name}"


def test_importing_the_package_has_no_side_effects() -> None:
    """Importing omni_server.app loads no model and parses no arguments."""
    import subprocess
    import sys

    code = "import sys, omni_server.app, omni_server.__main__; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PACKAGE.parent)
