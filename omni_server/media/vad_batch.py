"""Silero VAD for many calls at once: every call's due 32 ms windows in one ONNX call, on one thread.

Owns `VadBatcher` (one loaded model, the requests waiting for it, and the thread that runs them) and
`BatchedVadStream` (one call's audio in, the speech probability of every window it completes out, as
`VadStream` gives them):

- on the caller's thread (the event loop), `submit` cuts the samples into 576-sample model inputs (64
  samples of context + a 512-sample window, exactly as `VadStream` does); a piece that completes no
  window is answered at once, without touching the batcher;
- the batcher's thread runs *rounds*, at most one per `tick_s` (8 ms): each round stacks the next
  window of every stream that has one waiting (`(B, 576)` inputs, the streams' states side by side as
  `(2, B, 128)`) into one `SileroVadModel.infer_batch`, and hands each stream its probability and new
  state. A request with several windows (a long piece) takes one per round, in order, without
  waiting for ticks; requests that arrive meanwhile join the next round, so a 5 s piece never holds
  a 20 ms one back by more than one round;
- a finished request's `on_done` is called on the batcher's thread, then `after_round` once per
  round (the session's adapter, `session.vad_feed`, hands a round's results to its event loop in one
  callback).

Why: per 20 ms piece a call used to pay a whole `InferenceSession.run` for a 1-row input on the event
loop (~0.2 ms, most of it fixed cost): with 10 calls that was over a third of the loop's busy time
(bench/RESULTS.md, "Scale"). Batched, the fixed cost is paid once per round, onnxruntime runs without
the GIL while the loop goes on, and the loop pays no thread wake-up per piece.
Probabilities equal `VadStream`'s (row `b` of the model depends only on row `b`; a test checks turn
decisions on real speech).

The thread starts on the first request and ends after `idle_exit_s` without work (or at `close`), so
an idle server, or a finished test, holds no thread. Plain threads and numpy: must not import asyncio,
torch, sockets, the session or the transport.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from omni_server.media.vad import CONTEXT_SAMPLES, STATE_SHAPE, WINDOW_SAMPLES, SileroVadModel

__all__ = ["BatchedVadStream", "VadBatcher"]

Probs = npt.NDArray[np.float32]
OnDone = Callable[[Probs | BaseException], None]  # called on the batcher's thread
_FRAME_SAMPLES = CONTEXT_SAMPLES + WINDOW_SAMPLES
_NO_FRAMES = np.zeros((0, _FRAME_SAMPLES), dtype=np.float32)
MAX_BATCH = 64  # windows per ONNX call: past this the per-window cost stops falling
# The batcher's thread runs at most one round per tick (see VadBatcher). A round's fixed cost is most of
# it at small batches (this 2-core VM, thread CPU: 1 window 0.44 ms, 8 windows 0.21 ms each, 16 0.13 ms,
# vs 0.35-0.49 ms for a window run alone): 8 ms gives 50 calls' ~1560 windows a second batches of ~12,
# for at most 8 ms more before a turn decision.
TICK_S = 0.008
# ... and keeps ticking this long without work before it waits for a wake-up: a call's pieces come every
# 20 ms, so with any call live it never sleeps on the event, whose set() costs the loop a syscall.
IDLE_AFTER_S = 0.25


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
    """Runs the due windows of any number of `BatchedVadStream`s together, on one thread of its own.

    Between rounds the thread sleeps `tick_s`, so the windows that arrive meanwhile share the next ONNX
    call (at most `tick_s` of added latency to a turn decision); a request never waits on a wake-up
    signal, only on that tick, so submitting costs the event loop an uncontended lock and no syscall.
    """

    def __init__(
        self,
        model: SileroVadModel,
        *,
        max_batch: int = MAX_BATCH,
        tick_s: float = TICK_S,
        idle_exit_s: float = 5.0,
        after_round: Callable[[], None] | None = None,
    ) -> None:
        """`after_round`, if given, is called on the batcher's thread after each round that finished
        requests (after their `on_done`s), so a caller can hand a round's results on all at once."""
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.model = model
        self.max_batch = max_batch
        self.tick_s = tick_s
        self.idle_exit_s = idle_exit_s
        self._after_round = after_round
        self._lock = threading.Lock()  # guards _queue, _thread, _idle, _closed
        self._queue: list[_Request] = []
        self._thread: threading.Thread | None = None
        self._idle = False  # the thread waits on _wake (no work for a while), rather than ticking
        self._wake = threading.Event()
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
        with self._lock:
            self._closed = True
            thread = self._thread
            self._wake.set()
        if thread is not None:
            thread.join()

    def _submit(self, request: _Request) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the VAD batcher is closed")
            self._queue.append(request)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="vad-batch", daemon=True)
                self._thread.start()
            elif self._idle:  # only on the way from no work to work: a wake-up costs a syscall
                self._idle = False
                self._wake.set()

    def _run(self) -> None:
        active: list[_Request] = []
        quiet_ticks = 0  # ticks in a row without work
        while True:
            with self._lock:
                active += self._queue
                self._queue.clear()
                if not active:
                    if self._closed:
                        self._thread = None
                        return
                    quiet_ticks += 1
                    if quiet_ticks * self.tick_s >= IDLE_AFTER_S:
                        self._idle = True
                        self._wake.clear()
            if not active and not self._idle:  # a quiet tick: the next piece is probably on its way
                time.sleep(self.tick_s)
                continue
            if not active:  # quiet for IDLE_AFTER_S: wait for work, or end after idle_exit_s
                woke = self._wake.wait(self.idle_exit_s)
                with self._lock:
                    self._idle = False
                    if not woke and not self._queue:
                        self._thread = None  # under the lock: the next `_submit` starts a new thread
                        return
                continue
            quiet_ticks = 0
            self._round(active)
            active = [r for r in active if r.done < len(r.frames)]
            if not active:
                time.sleep(self.tick_s)  # let the next windows gather; long pieces go on at once

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
            if self._after_round is not None:
                self._after_round()
            return
        for i, r in enumerate(batch):
            r.probs[r.done] = probs[i]
            r.stream.state = new_states[:, i : i + 1]
            r.done += 1
        self.rounds += 1
        self.windows += len(batch)
        self.largest_batch = max(self.largest_batch, len(batch))
        finished = False
        for r in batch:
            if r.done == len(r.frames):
                r.stream.windows_processed += len(r.frames)
                r.stream.busy = False
                r.on_done(r.probs)
                finished = True
        if finished and self._after_round is not None:
            self._after_round()


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
        """The model inputs (context + window) of every window `x` completes; keeps the rest for later.

        The stream is `_buffer[:start]` (context and the samples so far) followed by `x`; window `k`'s
        input is that stream's `[512 k, 512 k + 576)`."""
        start = CONTEXT_SAMPLES + self._filled
        count = (self._filled + x.size) // WINDOW_SAMPLES
        if count == 0:
            self._buffer[start : start + x.size] = x
            self._filled += x.size
            return _NO_FRAMES
        frames = np.empty((count, _FRAME_SAMPLES), dtype=np.float32)
        for k in range(count):
            lo = k * WINDOW_SAMPLES
            if lo < start:  # the first window (or two) begin in the buffer
                frames[k, : start - lo] = self._buffer[lo:start]
                frames[k, start - lo :] = x[: lo + _FRAME_SAMPLES - start]
            else:
                frames[k] = x[lo - start : lo - start + _FRAME_SAMPLES]
        # Keep the next window's context and its samples so far: the stream from 512 * count on.
        cut = count * WINDOW_SAMPLES
        if cut >= start:
            rest = x[cut - start :]
            self._buffer[: rest.size] = rest
        else:  # the context begins in the buffer (it held more than 448 samples)
            keep = start - cut
            self._buffer[:keep] = self._buffer[cut:start].copy()
            self._buffer[keep : keep + x.size] = x
        self._filled = start + x.size - cut - CONTEXT_SAMPLES
        return frames
