"""Tests for omni_server.session.vad_feed: a call awaits its VAD over the shared batcher."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from omni_server.media.vad import WINDOW_SAMPLES, SileroVadModel, VadStream
from omni_server.session.vad_feed import CallVad, VadFeed
from tests.conftest import timeout
from tests.vad_models import BrokenModel, GatedModel


def _audio(seed: int, seconds: float = 3.0) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000)
    return (np.sin(np.arange(n) * 0.05 * (seed + 1)) * 0.3 * (rng.random(n) > 0.3)).astype(np.float32)


async def test_calls_awaiting_together_get_their_own_probabilities(
    vad_model: SileroVadModel, vad_feed: VadFeed
) -> None:
    """Eight calls feeding 20 ms pieces at once each get what a VadStream of their own gives."""
    audios = [_audio(seed) for seed in range(8)]
    calls = [vad_feed.stream() for _ in audios]

    async def one_call(vad: CallVad, audio: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return np.concatenate([await vad.feed(audio[pos : pos + 320]) for pos in range(0, audio.size, 320)])

    got = await asyncio.gather(*(one_call(v, a) for v, a in zip(calls, audios, strict=True)))
    for probs, audio in zip(got, audios, strict=True):
        np.testing.assert_allclose(probs, VadStream(vad_model).feed(audio), rtol=0, atol=1e-6)


async def test_a_piece_without_a_whole_window_is_answered_at_once(vad_feed: VadFeed) -> None:
    """Samples short of a window return no probabilities and never start the batcher's thread."""
    vad = vad_feed.stream()
    assert len(await vad.feed(np.zeros(WINDOW_SAMPLES - 1, np.float32))) == 0
    assert vad_feed.batcher._thread is None


async def test_a_cancelled_call_leaves_the_others_whole(vad_feed: VadFeed) -> None:
    """Cancelling one call while its windows run leaves the other call's result whole."""
    victim, other = vad_feed.stream(), vad_feed.stream()
    audio = np.zeros(2 * 16000, np.float32)
    cancelled = asyncio.create_task(victim.feed(audio))
    kept = asyncio.create_task(other.feed(audio))
    await asyncio.sleep(0)  # both have submitted
    cancelled.cancel()
    assert len(await kept) == 2 * 16000 // WINDOW_SAMPLES
    with pytest.raises(asyncio.CancelledError):
        await cancelled


async def test_a_model_failure_is_raised_in_the_call() -> None:
    """The model's error surfaces in the awaiting call."""
    feed = VadFeed(BrokenModel())
    try:
        with pytest.raises(RuntimeError, match="onnxruntime failed"):
            await feed.stream().feed(np.zeros(WINDOW_SAMPLES, np.float32))
    finally:
        feed.close()


async def test_one_round_wakes_the_loop_once() -> None:
    """Calls finished by the same round are settled by one callback on their loop, not one each."""
    gated = GatedModel()
    feed = VadFeed(gated)
    loop = asyncio.get_running_loop()
    scheduled: list[object] = []
    original = loop.call_soon_threadsafe

    def counting(callback: Any, *args: Any, context: Any = None) -> asyncio.Handle:
        scheduled.append(callback)
        return original(callback, *args, context=context)

    try:
        # Another stream's window holds the batcher's first round while eight calls queue theirs.
        assert feed.batcher.stream().submit(np.zeros(WINDOW_SAMPLES, np.float32), lambda _: None) is None
        assert await asyncio.to_thread(gated.entered.wait, timeout(10))
        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        calls = [feed.stream() for _ in range(8)]
        tasks = [asyncio.create_task(c.feed(np.zeros(WINDOW_SAMPLES, np.float32))) for c in calls]
        await asyncio.sleep(0)  # all eight have submitted
        gated.gate.set()
        assert all(len(p) == 1 for p in await asyncio.gather(*tasks))
    finally:
        del loop.call_soon_threadsafe
        feed.close()
    assert gated.batch_sizes[:2] == [1, 8]
    assert len(scheduled) == 1
