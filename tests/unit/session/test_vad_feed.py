"""Tests for omni_server.session.vad_feed: a call awaits its VAD over the shared batcher."""

from __future__ import annotations

import asyncio

import numpy as np
import numpy.typing as npt
import pytest

from omni_server.media.vad import WINDOW_SAMPLES, SileroVadModel, VadStream
from omni_server.media.vad_batch import VadBatcher
from omni_server.session.vad_feed import CallVad


def _audio(seed: int, seconds: float = 3.0) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000)
    return (np.sin(np.arange(n) * 0.05 * (seed + 1)) * 0.3 * (rng.random(n) > 0.3)).astype(np.float32)


async def test_calls_awaiting_together_get_their_own_probabilities(
    vad_model: SileroVadModel, vad_batcher: VadBatcher
) -> None:
    """Eight calls feeding 20 ms pieces at once each get what a VadStream of their own gives."""
    audios = [_audio(seed) for seed in range(8)]
    calls = [CallVad(vad_batcher) for _ in audios]

    async def one_call(vad: CallVad, audio: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return np.concatenate([await vad.feed(audio[pos : pos + 320]) for pos in range(0, audio.size, 320)])

    got = await asyncio.gather(*(one_call(v, a) for v, a in zip(calls, audios, strict=True)))
    for probs, audio in zip(got, audios, strict=True):
        np.testing.assert_allclose(probs, VadStream(vad_model).feed(audio), rtol=0, atol=1e-6)


async def test_a_piece_without_a_whole_window_is_answered_at_once(vad_batcher: VadBatcher) -> None:
    """Samples short of a window return no probabilities and never start the vad_batcher's thread."""
    vad = CallVad(vad_batcher)
    assert len(await vad.feed(np.zeros(WINDOW_SAMPLES - 1, np.float32))) == 0
    assert vad_batcher._thread is None


async def test_a_cancelled_call_leaves_the_others_whole(vad_batcher: VadBatcher) -> None:
    """Cancelling one call while its windows run leaves the other call's result whole."""
    victim, other = CallVad(vad_batcher), CallVad(vad_batcher)
    audio = np.zeros(2 * 16000, np.float32)
    cancelled = asyncio.create_task(victim.feed(audio))
    kept = asyncio.create_task(other.feed(audio))
    await asyncio.sleep(0)  # both have submitted
    cancelled.cancel()
    assert len(await kept) == 2 * 16000 // WINDOW_SAMPLES
    with pytest.raises(asyncio.CancelledError):
        await cancelled


class _BrokenModel(SileroVadModel):
    def infer_batch(
        self, frames: npt.NDArray[np.float32], states: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        raise RuntimeError("onnxruntime failed")


async def test_a_model_failure_is_raised_in_the_call() -> None:
    """The model's error surfaces in the awaiting call."""
    batcher = VadBatcher(_BrokenModel())
    try:
        with pytest.raises(RuntimeError, match="onnxruntime failed"):
            await CallVad(batcher).feed(np.zeros(WINDOW_SAMPLES, np.float32))
    finally:
        batcher.close()
