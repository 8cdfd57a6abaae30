"""Settings come from defaults, a TOML file, OMNI_* variables and flags, in that order."""

from __future__ import annotations

from pathlib import Path

import pytest

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
    with pytest.raises(SystemExit, match="turn_model_threshold"):
        load_settings([], {"OMNI_TURN_MODEL_THRESHOLD": "1.5"})


def test_token_is_masked_when_printed() -> None:
    """The start-up print-out never shows the token."""
    lines = load_settings(["--token", "s3cret"], {}).describe()
    assert "token = '****'" in lines and not any("s3cret" in line for line in lines)


def test_every_option_has_help() -> None:
    """--help explains every option."""
    for action in build_parser()._actions:
        assert action.help, action.dest
