"""The official openbmb-realtime SDK, through our examples, holds conversations with the server."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import soundfile as sf

from examples import sdk_audio_session, sdk_video_session
from omni_server.app import OmniServer
from tests.conftest import TOKEN, timeout

pytestmark = pytest.mark.usefixtures("trust_server_cert")


@contextlib.contextmanager
def moviepy_leaks_pipes() -> Iterator[None]:
    """moviepy 2.2's ffmpeg readers close without closing their stderr pipe; not our leak to fix."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        yield
        gc.collect()


def base_url(server: OmniServer) -> str:
    return f"https://127.0.0.1:{server.port}"


async def test_audio_session_gets_spoken_reply(
    server: OmniServer, question: npt.NDArray[np.float32], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spoken question streamed by the SDK gets reply text and 24 kHz speech back."""
    monkeypatch.setenv("MODELBEST_API_KEY", TOKEN)
    text, audio = await asyncio.wait_for(
        sdk_audio_session.converse(base_url(server), question, realtime=False), timeout(60)
    )
    assert audio.dtype == np.float32 and len(audio) > 24000 * 0.4
    assert np.abs(audio).max() > 0.0
    assert isinstance(text, str)


async def test_two_turns_in_one_call(
    server: OmniServer, question: npt.NDArray[np.float32], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each SDK call is its own conversation; the server frees it when the call ends."""
    monkeypatch.setenv("MODELBEST_API_KEY", TOKEN)
    for _ in range(2):
        _, audio = await asyncio.wait_for(
            sdk_audio_session.converse(base_url(server), question, realtime=False), timeout(60)
        )
        assert len(audio) > 0
    for _ in range(100):
        if not server.manager.sessions:
            break
        await asyncio.sleep(0.05)
    assert server.manager.sessions == {}
    assert server.manager.admission.active == 0


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory, question_wav: Path) -> Path:
    """A 4-second mp4: a coloured picture and a spoken question."""
    from moviepy import AudioFileClip, ColorClip

    path = tmp_path_factory.mktemp("clip") / "question.mp4"
    with moviepy_leaks_pipes(), AudioFileClip(str(question_wav)) as audio:
        video = ColorClip((320, 240), color=(30, 120, 200), duration=audio.duration).with_audio(audio)
        video.write_videofile(str(path), fps=5, codec="libx264", audio_codec="aac", logger=None)
        video.close()
    return path


async def test_video_session_gets_spoken_reply(server: OmniServer, clip: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A video call (1 s audio + 1 JPEG per append) gets a spoken reply."""
    monkeypatch.setenv("MODELBEST_API_KEY", TOKEN)
    with moviepy_leaks_pipes():
        units = sdk_video_session.read_clip(str(clip))
    assert len(units) >= 3
    text, audio = await asyncio.wait_for(sdk_video_session.call(base_url(server), units, realtime=False), timeout(60))
    assert len(audio) > 0


async def test_example_script_runs_unchanged(server: OmniServer, question_wav: Path, tmp_path: Path) -> None:
    """examples/sdk_audio_session.py, run as a program, writes the reply to a WAV."""
    out = tmp_path / "reply.wav"
    env = {**os.environ, "MODELBEST_API_KEY": TOKEN}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "examples/sdk_audio_session.py",
        base_url(server),
        str(question_wav),
        str(out),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    stdout, _ = await asyncio.wait_for(proc.communicate(), timeout(90))
    assert proc.returncode == 0, stdout.decode()
    reply, rate = sf.read(out, dtype="float32")
    assert rate == 24000 and len(reply) > 0
