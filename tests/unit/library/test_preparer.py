"""Voice preparation: a few threads below the calls' priority, a bounded wait, refusals as protocol errors."""

from __future__ import annotations

import asyncio
import os
import sys
import threading

import numpy as np
import numpy.typing as npt
import pytest

from omni_server.errors import InvalidVoice, SessionRefused
from omni_server.library.preparer import VoicePreparer
from omni_server.media.audio_file import DecodeLimits
from omni_server.media.vad import SileroVadModel
from tests.audio_files import encode, flac_bomb
from tests.conftest import timeout


@pytest.fixture(scope="module")
def vad() -> SileroVadModel:
    return SileroVadModel()


async def test_a_voice_is_prepared_and_a_bad_one_refused_plainly(
    vad: SileroVadModel, question: npt.NDArray[np.float32]
) -> None:
    """A spoken clip comes back prepared; a FLAC bomb and a silent PCM reference come back as `invalid_voice`."""
    preparer = VoicePreparer(DecodeLimits(), vad)
    try:
        speech = np.concatenate([question, question])
        prepared = await preparer.from_file(encode(speech, "ogg"), "audio/ogg")
        assert prepared.speech_s >= 3.0
        with pytest.raises(InvalidVoice, match="sample rate of 16 Hz"):
            await preparer.from_file(flac_bomb(16), "")
        with pytest.raises(InvalidVoice, match="silent"):
            await preparer.from_pcm(np.zeros(16_000 * 4, np.float32))
    finally:
        preparer.close()


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread priorities are a Linux feature")
async def test_preparation_runs_one_at_a_time_below_the_callers_priority(vad: SileroVadModel) -> None:
    """Two workers' worth of work never overlaps on one worker; each runs at a higher nice value than the loop."""
    preparer = VoicePreparer(DecodeLimits(), vad, workers=1, max_waiting=4)
    running, most, nice = 0, 0, []
    release = threading.Event()
    lock = threading.Lock()

    def job(_: object) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        nice.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        release.wait(timeout(10))
        with lock:
            running -= 1
        return 0

    try:
        jobs = [asyncio.ensure_future(preparer._run(job, None)) for _ in range(3)]
        await asyncio.sleep(0)
        release.set()
        async with asyncio.timeout(timeout(10)):
            await asyncio.gather(*jobs)
        assert most == 1
        assert nice and min(nice) > os.getpriority(os.PRIO_PROCESS, 0)
    finally:
        preparer.close()


async def test_callers_beyond_the_bound_are_refused_at_once(vad: SileroVadModel) -> None:
    """With one worker and one waiting place taken, a third caller gets `busy` at once, not a place in a queue."""
    preparer = VoicePreparer(DecodeLimits(), vad, workers=1, max_waiting=1)
    release = threading.Event()
    try:
        held = [asyncio.ensure_future(preparer._run(lambda _: release.wait(timeout(10)), None)) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(SessionRefused) as refused:
            await preparer.from_pcm(np.zeros(16_000, np.float32))
        assert refused.value.code == "busy"
        release.set()
        async with asyncio.timeout(timeout(10)):
            await asyncio.gather(*held)
        with pytest.raises(InvalidVoice):  # places are given back once the work is done
            await preparer.from_pcm(np.zeros(16_000, np.float32))
    finally:
        preparer.close()
