"""Silero VAD v5+ speech probabilities over 16 kHz mono audio, run with onnxruntime.

Owns the model file lookup, the shared ``onnxruntime.InferenceSession`` (``SileroVadModel``) and the
per-stream recurrent state (``VadStream``). Turning probabilities into turns is ``session.turns``'s job.

Must not import the ``silero_vad`` package (importing it calls ``torch.set_num_threads(1)`` for the
whole process), nor torch, sockets or asyncio. The only file read is the ONNX model, at construction.

The stream protocol mirrors ``silero_vad.utils_vad.OnnxWrapper``: each call gets exactly 512 new
samples prefixed with the last 64 samples of the previous window (zeros at stream start), plus the
``(2, 1, 128)`` state returned by the previous call. Without the context the model reports
near-zero probabilities even for clear speech.

The ONNX graph is batch-first: ``input`` ``(B, 576)``, ``state`` ``(2, B, 128)``, ``output`` ``(B, 1)``,
row ``b`` depending only on row ``b`` of the input and column ``b`` of the state, so windows of
different streams can share one call (``SileroVadModel.infer_batch``; ``media.vad_batch`` does that
for many calls at once).
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import numpy.typing as npt
import onnxruntime

__all__ = [
    "CONTEXT_SAMPLES",
    "SAMPLE_RATE_HZ",
    "STATE_SHAPE",
    "WINDOW_SAMPLES",
    "SileroVadModel",
    "VadStream",
    "shipped_model_path",
]

SAMPLE_RATE_HZ = 16_000
WINDOW_SAMPLES = 512
CONTEXT_SAMPLES = 64
STATE_SHAPE = (2, 1, 128)


def shipped_model_path() -> str:
    """Path of ``silero_vad.onnx`` inside the installed ``silero-vad`` wheel, found without importing it."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the silero-vad package is not installed; it ships the VAD model")
    path = os.path.join(spec.submodule_search_locations[0], "data", "silero_vad.onnx")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"silero-vad is installed but its model is missing: {path}")
    return path


class SileroVadModel:
    """One loaded Silero ONNX model, stateless and shareable by any number of ``VadStream``s.

    ``InferenceSession.run`` is thread-safe, so streams on different threads may share it. One thread
    per op: a 512-sample window is far too small to gain from parallelism, and the server runs many.
    """

    def __init__(self, model_path: str | None = None) -> None:
        self.model_path = model_path if model_path is not None else shipped_model_path()
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(
            self.model_path, sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self._sr = np.array(SAMPLE_RATE_HZ, dtype=np.int64)

    def stream(self) -> VadStream:
        """A new stream with fresh state over this model."""
        return VadStream(self)

    def infer(
        self, frame: npt.NDArray[np.float32], state: npt.NDArray[np.float32]
    ) -> tuple[float, npt.NDArray[np.float32]]:
        """Run one step: ``frame`` is context + window (576 samples); returns (probability, new state)."""
        out, new_state = self._session.run(None, {"input": frame.reshape(1, -1), "state": state, "sr": self._sr})
        return float(out[0, 0]), new_state

    def infer_batch(
        self, frames: npt.NDArray[np.float32], states: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """One step of ``B`` independent streams: ``frames`` ``(B, 576)``, ``states`` ``(2, B, 128)``;
        returns (probabilities ``(B,)``, new states ``(2, B, 128)``)."""
        out, new_states = self._session.run(None, {"input": frames, "state": states, "sr": self._sr})
        return out[:, 0], new_states


class VadStream:
    """Per-stream VAD state: feed 16 kHz audio in any chunk size, get one probability per 512 samples.

    Window ``k`` covers stream samples ``[512 k, 512 (k + 1))``; samples short of a full window wait in
    a buffer for the next ``feed``. Not thread-safe; one per audio stream.
    """

    def __init__(self, model: SileroVadModel) -> None:
        self._model = model
        # _frame holds [context (64) | window (512)]; _filled counts window samples buffered so far.
        self._frame = np.zeros(CONTEXT_SAMPLES + WINDOW_SAMPLES, dtype=np.float32)
        self._filled = 0
        self._state = np.zeros(STATE_SHAPE, dtype=np.float32)
        self._windows = 0

    @property
    def windows_processed(self) -> int:
        """Complete windows run through the model since the start (or last reset)."""
        return self._windows

    @property
    def pending_samples(self) -> int:
        """Samples buffered towards the next window."""
        return self._filled

    def feed(self, samples: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Append samples; return the speech probability of every window they complete (maybe none)."""
        x = np.asarray(samples, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"expected 1-D mono samples, got shape {x.shape}")
        probs: list[float] = []
        pos = 0
        while pos < x.size:
            take = min(WINDOW_SAMPLES - self._filled, x.size - pos)
            start = CONTEXT_SAMPLES + self._filled
            self._frame[start : start + take] = x[pos : pos + take]
            self._filled += take
            pos += take
            if self._filled == WINDOW_SAMPLES:
                prob, self._state = self._model.infer(self._frame, self._state)
                probs.append(prob)
                self._frame[:CONTEXT_SAMPLES] = self._frame[-CONTEXT_SAMPLES:]
                self._filled = 0
                self._windows += 1
        return np.array(probs, dtype=np.float32)

    def reset(self) -> None:
        """Forget state, context and buffered samples, as if the stream had just begun."""
        self._frame[:] = 0.0
        self._filled = 0
        self._state = np.zeros(STATE_SHAPE, dtype=np.float32)
        self._windows = 0
