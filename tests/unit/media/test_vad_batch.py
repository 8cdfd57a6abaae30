"""Tests for omni_server.media.vad_batch: many streams' windows in one ONNX call, same decisions as alone."""

from __future__ import annotations

import queue
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from omni_server.media.vad import WINDOW_SAMPLES, SileroVadModel, VadStream
from omni_server.media.vad_batch import BatchedVadStream, OnDone, VadBatcher
from omni_server.session.turns import TurnConfig, TurnDetector, TurnEvent
from tests import speech
from tests.conftest import timeout
from tests.vad_models import BrokenModel, GatedModel

PIECE = 320  # 20 ms, as a browser sends it
Probs = npt.NDArray[np.float32]


@pytest.fixture(scope="module")
def calls(speech_dir: Path) -> list[Probs]:
    """Six different calls' audio: real espeak-ng speech, each sentence three times, at other gains and offsets."""
    wavs = [speech.make_speech_wav(text, speech_dir / f"batch{i}.wav") for i, text in enumerate(speech.SENTENCES)]
    voices = [speech.load_f32(w) for w in wavs]
    out = []
    for i in range(6):
        lead = np.zeros(PIECE * (7 * i + 3), dtype=np.float32)
        audio = np.concatenate([lead, voices[i % 2] * (0.4 + 0.25 * i), np.zeros(16000, np.float32)])
        out.append(audio.astype(np.float32))
    return out


class Results:
    """Collects `on_done` results from the batcher's thread; `wait(n)` returns the next n of them."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[int, Probs | BaseException]] = queue.Queue()

    def on_done(self, key: int) -> OnDone:
        return lambda result: self._queue.put((key, result))

    def wait(self, n: int) -> dict[int, Probs | BaseException]:
        return dict(self._queue.get(timeout=timeout(10)) for _ in range(n))


def feed(stream: BatchedVadStream, samples: Probs) -> Probs:
    """One stream's piece, waited for."""
    results = Results()
    ready = stream.submit(samples, results.on_done(0))
    got = ready if ready is not None else results.wait(1)[0]
    assert not isinstance(got, BaseException)
    return got


def _turns(probs: Probs) -> list[TurnEvent]:
    return TurnDetector(TurnConfig()).feed(probs)


def test_batched_probabilities_and_turns_equal_one_stream_each(
    vad_model: SileroVadModel, vad_batcher: VadBatcher, calls: list[Probs]
) -> None:
    """Six calls fed together in 20 ms pieces share ONNX calls yet get exactly each call's own probabilities and turns."""
    alone = [VadStream(vad_model).feed(audio) for audio in calls]
    streams = [vad_batcher.stream() for _ in calls]
    got: list[list[Probs]] = [[] for _ in calls]
    results = Results()
    for pos in range(0, max(map(len, calls)), PIECE):
        waiting = 0
        for i, (stream, audio) in enumerate(zip(streams, calls, strict=True)):
            ready = stream.submit(audio[pos : pos + PIECE], results.on_done(i))
            if ready is None:
                waiting += 1
            else:
                got[i].append(ready)
        for i, probs in sorted(results.wait(waiting).items()):
            assert not isinstance(probs, BaseException)
            got[i].append(probs)
    assert vad_batcher.largest_batch > 1  # windows of different calls did share ONNX calls
    for own, pieces in zip(alone, got, strict=True):
        batched = np.concatenate(pieces)
        np.testing.assert_allclose(batched, own, rtol=0, atol=1e-6)
        assert _turns(batched) == _turns(own)
        assert len(_turns(own)) == 2  # the speech is found: one turn starts and stops


def test_pieces_of_any_size_give_the_same_windows(vad_model: SileroVadModel, vad_batcher: VadBatcher) -> None:
    """Empty, tiny, window-sized and multi-second pieces give the probabilities of one big feed."""
    rng = np.random.default_rng(0)
    audio = (np.sin(np.arange(48000) * 0.07) * (rng.random(48000) > 0.5) * 0.3).astype(np.float32)
    stream = vad_batcher.stream()
    # 500 then 100: a window completes while its context still lies in the buffer.
    sizes = [0, 1, 511, 1, WINDOW_SAMPLES, 3 * WINDOW_SAMPLES + 7, 500, 100, 20000, 0, 5]
    pieces, pos = [], 0
    for n in [*sizes, audio.size]:
        pieces.append(feed(stream, audio[pos : pos + n]))
        pos = min(pos + n, audio.size)
    np.testing.assert_array_equal(np.concatenate(pieces), VadStream(vad_model).feed(audio))
    assert stream.windows_processed == audio.size // WINDOW_SAMPLES
    assert stream.pending_samples == audio.size % WINDOW_SAMPLES


def test_a_long_piece_does_not_hold_back_other_calls() -> None:
    """A 20 ms piece's window that arrives while a 5 s piece runs joins the next round and finishes first."""
    gated = GatedModel()
    batcher = VadBatcher(gated)
    try:
        finished: queue.Queue[str] = queue.Queue()
        long_stream, short_stream = batcher.stream(), batcher.stream()
        assert long_stream.submit(np.zeros(5 * 16000, np.float32), lambda _: finished.put("long")) is None
        assert gated.entered.wait(timeout(10))  # round 1 holds the long piece's first window
        assert short_stream.submit(np.zeros(WINDOW_SAMPLES, np.float32), lambda _: finished.put("short")) is None
        gated.gate.set()
        assert [finished.get(timeout=timeout(10)) for _ in range(2)] == ["short", "long"]
        assert gated.batch_sizes[:2] == [1, 2]
        assert long_stream.windows_processed == 5 * 16000 // WINDOW_SAMPLES
    finally:
        batcher.close()


def test_one_request_at_a_time_per_stream() -> None:
    """Feeding a stream again before its windows are done is a programming error, said plainly."""
    gated = GatedModel()
    batcher = VadBatcher(gated)
    try:
        stream = batcher.stream()
        results = Results()
        assert stream.submit(np.zeros(WINDOW_SAMPLES, np.float32), results.on_done(0)) is None
        assert gated.entered.wait(timeout(10))
        with pytest.raises(RuntimeError, match="before its previous windows were done"):
            stream.submit(np.zeros(WINDOW_SAMPLES, np.float32), results.on_done(1))
        gated.gate.set()
        assert list(results.wait(1)) == [0] and not stream.busy
    finally:
        batcher.close()


def test_the_thread_ends_when_idle_and_comes_back(vad_model: SileroVadModel) -> None:
    """With nothing to do the thread exits; the next request starts a new one."""
    batcher = VadBatcher(vad_model, idle_exit_s=0.01)
    try:
        stream = batcher.stream()
        feed(stream, np.zeros(WINDOW_SAMPLES, np.float32))
        thread = batcher._thread
        assert thread is not None
        thread.join(timeout(10))
        assert not thread.is_alive() and batcher._thread is None
        assert len(feed(stream, np.zeros(WINDOW_SAMPLES, np.float32))) == 1
    finally:
        batcher.close()


def test_closed_batcher_refuses_work(vad_model: SileroVadModel) -> None:
    """After close a piece that needs the model raises; one that completes no window still buffers."""
    batcher = VadBatcher(vad_model)
    stream = batcher.stream()
    batcher.close()
    assert len(feed(stream, np.zeros(100, np.float32))) == 0
    with pytest.raises(RuntimeError, match="closed"):
        feed(stream, np.zeros(WINDOW_SAMPLES, np.float32))
    assert not stream.busy


def test_a_model_failure_reaches_the_waiting_calls() -> None:
    """If the ONNX call fails, each waiting stream gets the error instead of waiting forever."""
    batcher = VadBatcher(BrokenModel())
    try:
        stream = batcher.stream()
        results = Results()
        assert stream.submit(np.zeros(WINDOW_SAMPLES, np.float32), results.on_done(0)) is None
        error = results.wait(1)[0]
        assert isinstance(error, RuntimeError) and "onnxruntime failed" in str(error)
        assert not stream.busy
    finally:
        batcher.close()


def test_rejects_multichannel(vad_batcher: VadBatcher) -> None:
    """Only mono (1-D) audio is accepted."""
    with pytest.raises(ValueError, match="1-D"):
        vad_batcher.stream().submit(np.zeros((512, 2), dtype=np.float32), print)
