"""Silero VAD for many calls at once: every call's due 32 ms windows in one ONNX call, on one thread.

Owns `VadBatcher` (one loaded model, the requests waiting for it, and the thread that runs them) and
`BatchedVadStream` (one call's audio in, the speech probability of every window it completes out, as
`VadStream` gives them):

- on the caller's thread (the event loop), `submit` cuts the samples into 576-sample model inputs (64
  samples of context + a 512-sample window, exactly as `VadStream` does); a piece that completes no
  window is answered at once, without touching the batcher;
- the batcher's thread runs *rounds*: each round stacks the next window of every stream that has one
  waiting (`(B, 576)` inputs, the streams' states side by side as `(2, B, 128)`) into one
  `SileroVadModel.infer_batch`, and hands each stream its probability and new state. A request with
  several windows (a long piece) takes one per round, in order; requests that arrive meanwhile join
  the next round, so a 5 s piece never holds a 20 ms one back by more than one round;
- a finished request's `on_done` is called on the batcher's thread (the session's adapter,
  `session.vad_feed`, hands it to its event loop).

Why: per 20 ms piece a call used to pay a whole `InferenceSession.run` for a 1-row input on the event
loop (~0.2 ms, most of it fixed cost): with 50 calls that was a third of the loop's time. Batched, the
fixed cost is paid once per round, and onnxruntime runs without the GIL while the loop goes on.
Probabilities equal `VadStream`'s (row `b` of the model depends only on row `b`; a test checks turn
decisions on real speech).

The thread starts on the first request and ends after `idle_exit_s` without work (or at `close`), so
an idle server, or a finished test, holds no thread. Plain threads and numpy: must not import asyncio,
torch, sockets, the session or the transport.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from omni_server.media.vad import CONTEXT_SAMPLES, STATE_SHAPE, WINDOW_SAMPLES, SileroVadModel

__all__ = ["BatchedVadStream", "VadBatcher"]

Probs = npt.NDArray[np.float32]
OnDone = Callable[[Probs | BaseException], None]  # called on the batcher's thread
_FRAME_SAMPLES = CONTEXT_SAMPLES + WINDOW_SAMPLES
MAX_BATCH = 64  # windows per ONNX call: past this the per-window cost stops falling


@dataclass(eq=False)
class _Request:
    """One `feed` call's windows, waiting for (or in) the batcher's rounds."""

    stream: BatchedVadStream
    frames: npt.NDArray[np.float32]  # (k, 576)
    on_done: OnDone
    probs: Probs = field(init=False)
    done: int = 0  # windows run so far

    def __post_init__(self) -> None:
        self.probs = np.empty(len(self.frames), dtype=np.float32)


class VadBatcher:
    """Runs the due windows of any number of `BatchedVadStream`s together, on one thread of its own."""

    def __init__(self, model: SileroVadModel, *, max_batch: int = MAX_BATCH, idle_exit_s: float = 5.0) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.model = model
        self.max_batch = max_batch
        self.idle_exit_s = idle_exit_s
        self._cond = threading.Condition()
        self._pending: list[_Request] = []
        self._thread: threading.Thread | None = None
        self._closed = False
        # Counters, for tests and benchmarks: ONNX calls made and windows they ran.
        self.rounds = 0
        self.windows = 0
        self.largest_batch = 0

    def stream(self) -> BatchedVadStream:
        """A new stream, with fresh state, over this batcher."""
        return BatchedVadStream(self)

    def close(self) -> None:
        """Finish the requests already queued, then stop the thread; later requests raise RuntimeError."""
        with self._cond:
            self._closed = True
            thread = self._thread
            self._cond.notify()
        if thread is not None:
            thread.join()

    def _submit(self, request: _Request) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("the VAD batcher is closed")
            self._pending.append(request)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="vad-batch", daemon=True)
                self._thread.start()
            else:
                self._cond.notify()

    def _run(self) -> None:
        active: list[_Request] = []
        while True:
            with self._cond:
                if not active and not self._pending and not self._closed:
                    self._cond.wait(self.idle_exit_s)
                active += self._pending
                self._pending.clear()
                if not active:
                    self._thread = None  # under the lock: the next `_submit` starts a new thread
                    return
            self._round(active)
            active = [r for r in active if r.done < len(r.frames)]

    def _round(self, active: list[_Request]) -> None:
        """One ONNX call: the next window of (up to `max_batch` of) the active requests."""
        batch = active[: self.max_batch]
        frames = np.stack([r.frames[r.done] for r in batch])
        states = np.concatenate([r.stream.state for r in batch], axis=1)
        try:
            probs, new_states = self.model.infer_batch(frames, states)
        except Exception as e:  # handed to each waiting call, which fails as its own VAD would have
            for r in batch:
                r.done = len(r.frames)
                r.stream.busy = False
                r.on_done(e)
            return
        for i, r in enumerate(batch):
            r.probs[r.done] = probs[i]
            r.stream.state = new_states[:, i : i + 1]
            r.done += 1
        self.rounds += 1
        self.windows += len(batch)
        self.largest_batch = max(self.largest_batch, len(batch))
        for r in batch:
            if r.done == len(r.frames):
                r.stream.windows_processed += len(r.frames)
                r.stream.busy = False
                r.on_done(r.probs)


class BatchedVadStream:
    """One call's VAD over a shared `VadBatcher`: the probability of every window its audio completes.

    Window `k` covers stream samples `[512 k, 512 (k + 1))`, as in `VadStream`. One request at a time
    (a call's input loop waits for each); while one runs, the state belongs to the batcher's thread.
    """

    def __init__(self, batcher: VadBatcher) -> None:
        self._batcher = batcher
        # _buffer holds [context (64) | window samples so far (_filled)], as VadStream's frame does.
        self._buffer = np.zeros(_FRAME_SAMPLES, dtype=np.float32)
        self._filled = 0
        self.state = np.zeros(STATE_SHAPE, dtype=np.float32)
        self.busy = False
        self.windows_processed = 0

    @property
    def pending_samples(self) -> int:
        """Samples buffered towards the next window."""
        return self._filled

    def submit(self, samples: npt.ArrayLike, on_done: OnDone) -> Probs | None:
        """Append samples. If they complete no window, return the (empty) probabilities now; otherwise
        queue the windows and return None: `on_done` gets their probabilities (or the model's error)."""
        x = np.asarray(samples, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"expected 1-D mono samples, got shape {x.shape}")
        if self.busy:
            raise RuntimeError("BatchedVadStream fed again before its previous windows were done")
        frames = self._cut(x)
        if not len(frames):
            return np.zeros(0, dtype=np.float32)
        self.busy = True
        try:
            self._batcher._submit(_Request(self, frames, on_done))
        except BaseException:
            self.busy = False
            raise
        return None

    def _cut(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """The model inputs (context + window) of every window `x` completes; keeps the rest for later."""
        start = CONTEXT_SAMPLES + self._filled
        total = self._filled + x.size
        count = total // WINDOW_SAMPLES
        if count == 0:
            self._buffer[start : start + x.size] = x
            self._filled = total
            return np.zeros((0, _FRAME_SAMPLES), dtype=np.float32)
        audio = np.concatenate([self._buffer[:start], x])  # context, then every sample not yet in a window
        step = np.lib.stride_tricks.sliding_window_view(audio, _FRAME_SAMPLES)[::WINDOW_SAMPLES]
        frames = np.ascontiguousarray(step[:count])
        rest = audio[count * WINDOW_SAMPLES :]  # the next window's context and its samples so far
        self._buffer[: rest.size] = rest
        self._filled = rest.size - CONTEXT_SAMPLES
        return frames
