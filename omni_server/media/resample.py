"""Sample-rate conversion for mono float32 audio: a streaming resampler and a one-shot helper.

Owns the choice of resampler (libsoxr through the ``soxr`` package, the one Pipecat streams with) and
its quality. ``StreamResampler`` keeps the filter state between calls, so audio cut into arbitrary
chunks (20 ms WebRTC frames, 1 s units) comes out seamless. Pure numpy + soxr: must not import torch,
sockets, asyncio or anything from ``omni_server`` outside ``media``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt
import soxr

__all__ = ["Quality", "StreamResampler", "resample"]

Quality = Literal["QQ", "LQ", "MQ", "HQ", "VHQ"]

_EMPTY = np.zeros(0, dtype=np.float32)


def _mono_f32(samples: npt.ArrayLike) -> npt.NDArray[np.float32]:
    x = np.ascontiguousarray(samples, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"expected 1-D mono samples, got shape {x.shape}")
    return x


def _check_rate(name: str, rate_hz: int) -> None:
    if rate_hz <= 0:
        raise ValueError(f"{name} must be > 0 Hz, got {rate_hz}")


class StreamResampler:
    """Resamples one continuous mono stream chunk by chunk.

    ``process`` may return fewer samples than the rate ratio suggests: the filter holds back a few
    milliseconds (``delay_samples``) until more input or ``flush`` arrives. Over a whole stream,
    ``process(...)`` outputs followed by ``flush()`` equal ``resample`` of the concatenated input.
    Equal rates are an identity that copies and holds nothing back. Not thread-safe; one per stream.
    """

    def __init__(self, src_rate_hz: int, dst_rate_hz: int, *, quality: Quality = "HQ") -> None:
        _check_rate("src_rate_hz", src_rate_hz)
        _check_rate("dst_rate_hz", dst_rate_hz)
        self.src_rate_hz = src_rate_hz
        self.dst_rate_hz = dst_rate_hz
        self._stream: soxr.ResampleStream | None = None
        if src_rate_hz != dst_rate_hz:
            self._stream = soxr.ResampleStream(src_rate_hz, dst_rate_hz, 1, dtype="float32", quality=quality)

    @property
    def delay_samples(self) -> float:
        """Output samples the filter currently holds back (0 for the identity)."""
        return 0.0 if self._stream is None else float(self._stream.delay())

    def process(self, samples: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Feed the next chunk (any length, even empty) and return the output that is ready."""
        x = _mono_f32(samples)
        if self._stream is None:
            return x.copy()
        if x.size == 0:
            return _EMPTY.copy()
        out: npt.NDArray[np.float32] = self._stream.resample_chunk(x)
        return out

    def flush(self) -> npt.NDArray[np.float32]:
        """End the stream: return the held-back tail and reset, ready for a new, unrelated stream."""
        if self._stream is None:
            return _EMPTY.copy()
        tail: npt.NDArray[np.float32] = self._stream.resample_chunk(_EMPTY, last=True)
        self._stream.clear()
        return tail

    def reset(self) -> None:
        """Drop held-back audio without returning it (e.g. on barge-in)."""
        if self._stream is not None:
            self._stream.clear()


def resample(
    samples: npt.ArrayLike, src_rate_hz: int, dst_rate_hz: int, *, quality: Quality = "HQ"
) -> npt.NDArray[np.float32]:
    """Resample a whole mono signal at once; returns a new float32 array (a copy for equal rates)."""
    _check_rate("src_rate_hz", src_rate_hz)
    _check_rate("dst_rate_hz", dst_rate_hz)
    x = _mono_f32(samples)
    if src_rate_hz == dst_rate_hz:
        return x.copy()
    if x.size == 0:
        return _EMPTY.copy()
    out: npt.NDArray[np.float32] = soxr.resample(x, src_rate_hz, dst_rate_hz, quality=quality)
    return out.astype(np.float32, copy=False)
