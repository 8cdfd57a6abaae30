"""Shared fixtures: a tiny engine, a running server on loopback, and speech made with espeak-ng."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from omni_server.app import OmniServer
from omni_server.config import Settings
from omni_server.engine.tiny import build_tiny_engine
from omni_server.media.vad import SileroVadModel
from omni_server.media.vad_batch import VadBatcher
from omni_server.session.vad_feed import VadFeed
from tests import speech

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TIMEOUT_SCALE = float(os.environ.get("OMNI_TEST_TIMEOUT_SCALE", "1"))
TOKEN = "test-token-123"


def timeout(seconds: float) -> float:
    """A wait bound, scaled for slow machines via OMNI_TEST_TIMEOUT_SCALE."""
    return seconds * TIMEOUT_SCALE


@pytest.fixture(scope="session")
def speech_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not speech.have_tools():
        pytest.fail("espeak-ng and sox are required (make test installs them)")
    return tmp_path_factory.mktemp("speech")


@pytest.fixture(scope="session")
def question_wav(speech_dir: Path) -> Path:
    return speech.make_speech_wav(speech.SENTENCES[0], speech_dir / "question.wav")


@pytest.fixture(scope="session")
def question(question_wav: Path) -> npt.NDArray[np.float32]:
    return speech.load_f32(question_wav)


@pytest.fixture(scope="session")
def vad_model() -> SileroVadModel:
    return SileroVadModel()


@pytest.fixture
def vad_batcher(vad_model: SileroVadModel) -> Iterator[VadBatcher]:
    """A VAD batcher over the shared model, closed (its thread joined) after the test."""
    batcher = VadBatcher(vad_model)
    yield batcher
    batcher.close()


@pytest.fixture
def vad_feed(vad_model: SileroVadModel) -> Iterator[VadFeed]:
    """Calls' VAD, as the session manager makes it, closed (its thread joined) after the test."""
    feed = VadFeed(vad_model)
    yield feed
    feed.close()


def server_settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": 0,
        "engine": "tiny",
        "token": TOKEN,
        "ssl_dir": str(tmp_path / "ssl"),
        "data_dir": str(tmp_path / "data"),
        "warm_up": False,
        "max_new_tokens": 48,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[OmniServer]:
    async with OmniServer(server_settings(tmp_path), build_tiny_engine(seed=0)) as running:
        yield running


@pytest.fixture
def trust_server_cert(server: OmniServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Let ordinary TLS clients (the SDK) verify the server's self-signed certificate."""
    assert server.cert_path is not None
    monkeypatch.setenv("SSL_CERT_FILE", str(server.cert_path))
