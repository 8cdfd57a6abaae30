"""Settings come from defaults, a TOML file, OMNI_* variables and flags, in that order."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path

import pytest

from omni_server.__main__ import run
from omni_server.config import build_parser, load_settings


def test_precedence_defaults_toml_env_flags(tmp_path: Path) -> None:
    """Each later source overrides the earlier ones, field by field."""
    toml = tmp_path / "omni.toml"
    toml.write_text('port = 9000\nmax_sessions = 3\nengine = "tiny"\n')
    settings = load_settings(
        ["--config", str(toml), "--max-sessions", "5"], {"OMNI_PORT": "9100", "OMNI_BARGE_IN": "false"}
    )
    assert (settings.port, settings.max_sessions, settings.engine, settings.barge_in) == (9100, 5, "tiny", False)
    assert load_settings([], {}).port == 8443


def test_bad_values_are_explained(tmp_path: Path) -> None:
    """Wrong types, unknown keys and impossible values stop start-up with a message naming them."""
    with pytest.raises(SystemExit, match="OMNI_PORT"):
        load_settings([], {"OMNI_PORT": "eighty"})
    bad = tmp_path / "bad.toml"
    bad.write_text("colour = 1\n")
    with pytest.raises(SystemExit, match="colour"):
        load_settings(["--config", str(bad)], {})
    with pytest.raises(SystemExit, match="engine"):
        load_settings(["--engine", "gpt"], {})
    with pytest.raises(SystemExit, match="turn_pause_ms"):  # the pause must come before the silence window
        load_settings(["--turn-pause-ms", "900"], {})
    with pytest.raises(SystemExit, match="speculate_pause_ms"):  # speculation never waits for the judge's pause
        load_settings(["--speculate-pause-ms", "300"], {})
    with pytest.raises(SystemExit, match="speculate_pause_ms"):
        load_settings([], {"OMNI_SPECULATE_PAUSE_MS": "0"})
    with pytest.raises(SystemExit, match="turn_model_threshold"):
        load_settings([], {"OMNI_TURN_MODEL_THRESHOLD": "1.5"})
    with pytest.raises(SystemExit, match="event_loop"):
        load_settings(["--event-loop", "trio"], {})


def test_token_is_masked_when_printed() -> None:
    """The start-up print-out never shows the token."""
    lines = load_settings(["--token", "s3cret"], {}).describe()
    assert "token = '****'" in lines and not any("s3cret" in line for line in lines)


def test_every_option_has_help() -> None:
    """--help explains every option."""
    for action in build_parser()._actions:
        assert action.help, action.dest


def _loop_kind() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def test_event_loop_falls_back_to_asyncio_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto runs on uvloop where it is installed and on asyncio's loop where not; uvloop asked for and missing is said plainly."""
    seen: list[str] = []

    async def main() -> None:
        seen.append(_loop_kind())

    run(main(), "asyncio")
    if importlib.util.find_spec("uvloop") is not None:
        run(main(), "auto")
        assert seen == ["asyncio", "uvloop"]
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as on a machine without it
    run(main(), "auto")
    assert seen[-1] == "asyncio"
    coro = main()
    with pytest.raises(SystemExit, match="uvloop is not installed"):
        run(coro, "uvloop")
    coro.close()
