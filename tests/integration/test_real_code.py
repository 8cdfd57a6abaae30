"""Calls on MiniCPM-o 2.6's own remote code, on the CPU, when OMNI_REAL_CODE_MODEL names a snapshot.

Any snapshot works (the published one is slow on a CPU); a tiny random-weight build around the real code
runs these in about a minute. Skipped otherwise: the model's code cannot be part of this repository.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from omni_server.app import OmniServer
from omni_server.config import Settings
from omni_server.engine.base import Engine
from omni_server.engine.loader import load_engine
from tests.conftest import server_settings
from tests.integration.realtime_client import RawClient

SNAPSHOT = os.environ.get("OMNI_REAL_CODE_MODEL", "")
pytestmark = [
    pytest.mark.skipif(not SNAPSHOT, reason="set OMNI_REAL_CODE_MODEL=<a MiniCPM-o 2.6 snapshot directory>"),
    # The model's own code warns as it is compiled and run (invalid escapes, deprecated arguments): not ours.
    pytest.mark.filterwarnings("ignore::SyntaxWarning", "ignore::UserWarning", "ignore::FutureWarning"),
]


@pytest.fixture(scope="module")
def real_engine() -> Iterator[Engine]:
    with warnings.catch_warnings():  # the marks above do not cover a module fixture's setup
        warnings.simplefilter("ignore")
        engine = load_engine(Settings(model=SNAPSHOT, device="cpu", dtype="fp32"))
    yield engine


async def test_a_spoken_turn_on_the_real_code_on_cpu(
    real_engine: Engine, tmp_path: Path, question: npt.NDArray[np.float32]
) -> None:
    """`--model DIR --device cpu`: a voice turn gets 24 kHz speech from the model's own code, then a second turn."""
    assert real_engine.info.name == "minicpm-o-2.6" and real_engine.info.device == "cpu"
    settings = server_settings(tmp_path, engine="minicpmo", model=SNAPSHOT, device="cpu", max_new_tokens=24)
    async with OmniServer(settings, real_engine) as server:
        client = await RawClient.connect(server)
        created = await client.start()
        assert created["engine"]["replies_are_noise"] is False
        for _ in range(2):
            await client.speak(question)
            done = await client.until("response.done", limit_s=120)
            assert done["response"]["status"] == "completed"
        audio = client.of_type("response.output_audio.delta")
        assert audio and all(a["sample_rate"] == 24000 for a in audio)
        await client.close()
