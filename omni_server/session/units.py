"""Audio bookkeeping for one call: fixed-size model units and the pre-roll kept while nobody speaks.

Owns ``UnitCutter`` (any chunking in, exact ``samples_per_unit`` units out: MiniCPM-o 2.6 listens in
1-second units of 16 kHz audio) and ``PreRoll`` (the last moments of audio before a turn starts, so the
first syllable reaches the model although the VAD confirms speech ~200 ms late). Sans-I/O: plain
numpy, no awaits, no clock, no sockets; must not import torch, the engine or the transport.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["PreRoll", "UnitCutter", "pad_tail"]

DEFAULT_SAMPLES_PER_UNIT = 16_000  # one second at 16 kHz


def _mono_f32(samples: npt.ArrayLike) -> npt.NDArray[np.float32]:
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"expected 1-D mono samples, got shape {x.shape}")
    return x


class UnitCutter:
    """Cuts a stream of mono float32 pieces of any size into units of exactly ``samples_per_unit``.

    Every unit returned is a new array the caller owns. Samples short of a unit wait for the next
    ``feed`` or for ``flush``.
    """

    def __init__(self, samples_per_unit: int = DEFAULT_SAMPLES_PER_UNIT) -> None:
        if samples_per_unit <= 0:
            raise ValueError(f"samples_per_unit must be > 0, got {samples_per_unit}")
        self.samples_per_unit = samples_per_unit
        self._buffer = np.zeros(samples_per_unit, dtype=np.float32)
        self._filled = 0

    @property
    def pending_samples(self) -> int:
        """Samples held towards the next unit (always < ``samples_per_unit``)."""
        return self._filled

    def feed(self, samples: npt.ArrayLike) -> list[npt.NDArray[np.float32]]:
        """Append a piece (any length, even empty); return every unit it completes, oldest first."""
        x = _mono_f32(samples)
        units: list[npt.NDArray[np.float32]] = []
        pos = 0
        size = self.samples_per_unit
        # Fast path: whole units straight from the input when nothing is pending.
        while self._filled == 0 and x.size - pos >= size:
            units.append(x[pos : pos + size].copy())
            pos += size
        while pos < x.size:
            take = min(size - self._filled, x.size - pos)
            self._buffer[self._filled : self._filled + take] = x[pos : pos + take]
            self._filled += take
            pos += take
            if self._filled == size:
                units.append(self._buffer.copy())
                self._filled = 0
        return units

    def flush(self) -> npt.NDArray[np.float32] | None:
        """Return the partial unit held so far (``None`` if there is none) and start afresh."""
        if self._filled == 0:
            return None
        rest = self._buffer[: self._filled].copy()
        self._filled = 0
        return rest

    def reset(self) -> None:
        """Drop the partial unit without returning it."""
        self._filled = 0


def pad_tail(samples: npt.NDArray[np.float32], min_samples: int) -> npt.NDArray[np.float32]:
    """A turn's last partial unit, padded with silence to at least ``min_samples``.

    The model cannot take audio shorter than that (its encoder fails on 20 ms or less). Padding, not
    merging into the unit before, is what keeps the speech as it was: that unit is usually prefilled
    already (merging would mean prefilling its second again), and the tail follows the end of the turn,
    so at most 20 ms more silence is all the model hears that it would not have; dropping the tail
    instead would lose the last 20 ms of a manually committed turn's speech.
    """
    if len(samples) >= min_samples:
        return samples
    return np.concatenate([samples, np.zeros(min_samples - len(samples), np.float32)])


class PreRoll:
    """Ring buffer of the most recent ``max_samples`` samples pushed; ``take`` empties it."""

    def __init__(self, max_samples: int) -> None:
        if max_samples < 0:
            raise ValueError(f"max_samples must be >= 0, got {max_samples}")
        self.max_samples = max_samples
        self._ring = np.zeros(max_samples, dtype=np.float32)
        self._end = 0  # index one past the newest sample
        self._size = 0

    @property
    def buffered_samples(self) -> int:
        """Samples currently held (at most ``max_samples``)."""
        return self._size

    def push(self, samples: npt.ArrayLike) -> None:
        """Remember ``samples``, forgetting the oldest ones beyond ``max_samples``."""
        x = _mono_f32(samples)
        cap = self.max_samples
        if cap == 0 or x.size == 0:
            return
        if x.size >= cap:
            self._ring[:] = x[-cap:]
            self._end = 0
            self._size = cap
            return
        first = min(x.size, cap - self._end)
        self._ring[self._end : self._end + first] = x[:first]
        self._ring[: x.size - first] = x[first:]
        self._end = (self._end + x.size) % cap
        self._size = min(cap, self._size + x.size)

    def take(self) -> npt.NDArray[np.float32]:
        """Return the held samples, oldest first, and empty the buffer."""
        start = (self._end - self._size) % self.max_samples if self.max_samples else 0
        if start + self._size <= self.max_samples:
            out = self._ring[start : start + self._size].copy()
        else:
            out = np.concatenate([self._ring[start:], self._ring[: self._end]])
        self.clear()
        return out

    def clear(self) -> None:
        """Forget everything held."""
        self._end = 0
        self._size = 0
