"""Semantic end of turn: Smart Turn v3.2 says whether an utterance sounds finished, from its audio alone.

Owns the model file lookup, the shared ``onnxruntime.InferenceSession`` (``SmartTurnModel``) and the
model's input features (``log_mel_features``). When to ask it, and what its answer changes, is
``session.turns``'s job.

The model is Daily's Smart Turn v3.2 (a Whisper-Tiny encoder with a classifier head, int8 ONNX, 23
languages including English and Chinese; BSD 2-Clause licence, notice in ``LICENSES/smart-turn.txt``).
It ships inside the ``pipecat-ai`` wheel, which the Makefile installs without its dependencies
(``requirements-nodeps.txt``): only the ONNX file is used, found without importing ``pipecat``.

Its input, as the model was trained: the last 8 s of the turn at 16 kHz (zeros in front when shorter),
normalised to zero mean and unit variance, as Whisper log-mel features (80 Slaney mel bands of a
400-point periodic-Hann STFT every 160 samples, centred with reflection, the last frame dropped, log10
floored 8 below the peak, then ``(x + 4) / 4``): an ``(80, 800)`` array. Its output is the probability
that the speaker has finished. The features are written here from that description (and checked in the
tests against transformers' ``WhisperFeatureExtractor``), so nothing but numpy runs before the model.

Must not import torch, transformers, pipecat, sockets or asyncio. The only file read is the ONNX model,
at construction.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import numpy.typing as npt
import onnxruntime

__all__ = ["INPUT_SAMPLES", "SAMPLE_RATE_HZ", "SmartTurnModel", "log_mel_features", "shipped_model_path"]

SAMPLE_RATE_HZ = 16_000
INPUT_S = 8
INPUT_SAMPLES = INPUT_S * SAMPLE_RATE_HZ
_N_FFT, _HOP, _N_MELS = 400, 160, 80
_MODEL_FILE = ("audio", "turn", "smart_turn", "data", "smart-turn-v3.2-cpu.onnx")


def shipped_model_path() -> str:
    """Path of Smart Turn v3.2's ONNX file inside the installed ``pipecat-ai`` wheel, found without importing it."""
    spec = importlib.util.find_spec("pipecat")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the pipecat-ai package is not installed; it ships the Smart Turn model "
            "(pip install --no-deps -r requirements-nodeps.txt)"
        )
    path = os.path.join(spec.submodule_search_locations[0], *_MODEL_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pipecat-ai is installed but its Smart Turn model is missing: {path}")
    return path


def _hz_to_mel(hz: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Slaney's mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above (27 mels per factor 6.4)."""
    linear = hz * 3.0 / 200.0
    return np.where(hz < 1000.0, linear, 15.0 + np.log(np.maximum(hz, 1e-9) / 1000.0) * 27.0 / np.log(6.4))


def _mel_to_hz(mel: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return np.where(mel < 15.0, mel * 200.0 / 3.0, 1000.0 * np.exp((mel - 15.0) * np.log(6.4) / 27.0))


def _mel_filters() -> npt.NDArray[np.float64]:
    """(80, 201) triangular filters from 0 to 8 kHz, each scaled to unit area (Slaney normalisation)."""
    fft_hz = np.linspace(0.0, SAMPLE_RATE_HZ / 2, _N_FFT // 2 + 1)
    edges_hz = _mel_to_hz(np.linspace(0.0, float(_hz_to_mel(np.array(SAMPLE_RATE_HZ / 2.0))), _N_MELS + 2))
    low, centre, high = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (fft_hz[None, :] - low) / (centre - low)
    falling = (high - fft_hz[None, :]) / (high - centre)
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    scaled: npt.NDArray[np.float64] = triangles * (2.0 / (high - low))
    return scaled


_FILTERS = _mel_filters()
_WINDOW = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(_N_FFT) / _N_FFT)  # periodic Hann


def log_mel_features(audio: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """The model's ``(80, 800)`` input for 16 kHz mono audio: its last 8 s, zeros in front when shorter."""
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"expected 1-D mono samples, got shape {x.shape}")
    x = x[-INPUT_SAMPLES:]
    x = np.concatenate([np.zeros(INPUT_SAMPLES - x.size, np.float32), x]) if x.size < INPUT_SAMPLES else x
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    padded = np.pad(x.astype(np.float64), _N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, _N_FFT)[::_HOP][:-1]  # 800 frames
    power = np.abs(np.fft.rfft(frames * _WINDOW, axis=-1)) ** 2  # (800, 201)
    log_mel = np.log10(np.maximum(_FILTERS @ power.T, 1e-10))
    log_mel = np.maximum(log_mel, log_mel.max() - 8.0)
    features: npt.NDArray[np.float32] = ((log_mel + 4.0) / 4.0).astype(np.float32)
    return features


class SmartTurnModel:
    """One loaded Smart Turn model, stateless and shareable: ``complete_probability(audio)``.

    ``InferenceSession.run`` is thread-safe, so calls may come from any thread. A decision is on the
    turn's critical path, so it runs on up to ``threads`` cores (default: two where there are two; this
    2-core AVX2 VM: 116 ms on one, 68 ms on two). The threads never spin between ops, so two cost the CPU
    time of one (~120 ms here; spinning took another ~60 ms of a core per decision). A ``crowded``
    decision (one right after another: many calls pausing together) runs on one core, leaving the rest
    to the event loop.
    """

    def __init__(self, model_path: str | None = None, *, threads: int | None = None) -> None:
        self.model_path = model_path if model_path is not None else shipped_model_path()
        threads = threads if threads is not None else min(2, os.cpu_count() or 1)
        self._one_core = self._load(1)
        self._session = self._load(threads) if threads > 1 else self._one_core

    def _load(self, threads: int) -> onnxruntime.InferenceSession:
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        return onnxruntime.InferenceSession(self.model_path, sess_options=opts, providers=["CPUExecutionProvider"])

    def complete_probability(self, audio: npt.ArrayLike, *, crowded: bool = False) -> float:
        """How sure the model is that the speaker has finished: the turn's audio so far, ending now, at 16 kHz."""
        features = log_mel_features(audio)[None]
        (out,) = (self._one_core if crowded else self._session).run(None, {"input_features": features})
        return float(np.asarray(out).reshape(-1)[0])
