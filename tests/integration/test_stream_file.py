"""`python -m omni_server.stream_file` streams a video file through the call code and writes the reply."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import soundfile as sf

from tests.conftest import timeout
from tests.integration.test_sdk import clip  # noqa: F401  (the fixture: a coloured picture and a spoken question)


def test_file_command_writes_reply(clip: Path, tmp_path: Path) -> None:  # noqa: F811
    """The command prints the reply text and writes its speech to a 24 kHz WAV."""
    out = tmp_path / "reply.wav"
    proc = subprocess.run(
        [
            sys.executable,
            "-W",
            "ignore::ResourceWarning",
            "-m",
            "omni_server.stream_file",
            str(clip),
            "--out",
            str(out),
            "--engine",
            "tiny",
        ],
        capture_output=True,
        text=True,
        timeout=timeout(120),
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "units in" in proc.stderr
    reply, rate = sf.read(out, dtype="float32")
    assert rate == 24000 and len(reply) > 0


def test_help_lists_the_engine_options() -> None:
    """`--help` shows the server's engine flags (one shared parser), not only the file arguments."""
    proc = subprocess.run(
        [sys.executable, "-m", "omni_server.stream_file", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0
    for flag in ("--engine", "--model", "--device", "--dtype", "--engine-cost", "--max-new-tokens"):
        assert flag in proc.stdout


def test_an_engine_failure_is_one_sentence(clip: Path, tmp_path: Path) -> None:  # noqa: F811
    """A model directory without the model's files ends the command with one plain sentence, no traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "omni_server.stream_file", str(clip), "--model", str(tmp_path), "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=timeout(120),
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("Cannot start the engine:") and "assets/Vocos.pt" in last
