"""PCM sample codecs: base64 little-endian float32 on the wire (or raw float32/int16 bytes in our binary
audio messages), int16 <-> float32 in memory.

Owns the validation of untrusted audio payloads (``AudioFormatError``) and the one convention for
float <-> int16 scaling used across the server. Pure numpy and the standard library: must not import
torch, sockets, asyncio or anything from ``omni_server`` outside ``media``.

Scaling convention (the one ffmpeg and libsoxr use): int16 ``n`` <-> float ``n / 32768``, so that
``f32_to_s16(s16_to_f32(x)) == x`` exactly and +1.0 clips to 32767.
"""

from __future__ import annotations

import base64
import binascii
import math

import numpy as np
import numpy.typing as npt

from omni_server.media.errors import MediaError

__all__ = ["AudioFormatError", "decode_f32_base64", "decode_pcm", "encode_f32_base64", "f32_to_s16", "s16_to_f32"]

_BYTES_PER_SAMPLE = 4
_S16_SCALE = 32768.0
_WIRE_DTYPE = np.dtype("<f4")
_S16_WIRE_DTYPE = np.dtype("<i2")


class AudioFormatError(MediaError):
    """An audio payload from a client is not what the protocol promises; the message is user-safe."""


def decode_f32_base64(text: str, *, max_samples: int) -> npt.NDArray[np.float32]:
    """Decode standard, padded base64 of little-endian float32 mono samples.

    Returns a fresh, writable native-endian array (empty for ``""``). Raises ``AudioFormatError`` when
    the text is not strict base64, its byte length is not a multiple of 4, it holds more than
    ``max_samples`` samples, or any sample is NaN or infinite.
    """
    if max_samples < 0:
        raise ValueError(f"max_samples must be >= 0, got {max_samples}")
    # Refuse oversize payloads before spending memory on decoding them: n bytes need 4*ceil(n/3) chars.
    max_chars = 4 * -(-max_samples * _BYTES_PER_SAMPLE // 3)
    if len(text) > max_chars:
        raise AudioFormatError(
            f"audio chunk too large: at most {max_samples} samples ({max_chars} base64 characters) "
            f"are accepted, got {len(text)} characters"
        )
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise AudioFormatError("audio is not valid base64 (standard alphabet, with padding)") from e
    return decode_pcm(raw, "f32", max_samples=max_samples)


def decode_pcm(data: bytes | memoryview, sample_format: str, *, max_samples: int) -> npt.NDArray[np.float32]:
    """Decode raw little-endian mono samples, `"f32"` (float32) or `"s16"` (int16, scaled by 1/32768).

    Returns a fresh, writable float32 array. Raises `AudioFormatError` when the byte length is not a
    whole number of samples, there are more than `max_samples`, or a float32 sample is NaN or infinite.
    """
    if sample_format not in ("f32", "s16"):
        raise ValueError(f"sample_format must be f32 or s16, got {sample_format!r}")
    size = 4 if sample_format == "f32" else 2
    if len(data) % size:
        kind = "float32" if size == 4 else "int16"
        raise AudioFormatError(
            f"audio byte length {len(data)} is not a multiple of {size}; expected {kind} little-endian samples"
        )
    n_samples = len(data) // size
    if n_samples > max_samples:
        raise AudioFormatError(f"audio chunk too large: {n_samples} samples, at most {max_samples} accepted")
    if sample_format == "s16":
        return s16_to_f32(np.frombuffer(data, dtype=_S16_WIRE_DTYPE).astype(np.int16))
    samples = np.frombuffer(data, dtype=_WIRE_DTYPE).astype(np.float32)
    # A float64 sum is finite exactly when every sample is (it cannot overflow for any float32 piece this
    # size), and costs a third of isfinite().all() on a 20 ms piece.
    if not math.isfinite(np.add.reduce(samples, dtype=np.float64)):
        bad = int(np.count_nonzero(~np.isfinite(samples)))
        raise AudioFormatError(f"audio contains {bad} NaN or infinite sample(s)")
    return samples


def encode_f32_base64(samples: npt.ArrayLike) -> str:
    """Encode 1-D samples as base64 of little-endian float32 (the inverse of ``decode_f32_base64``)."""
    wire = np.ascontiguousarray(samples, dtype=_WIRE_DTYPE)
    if wire.ndim != 1:
        raise ValueError(f"expected 1-D mono samples, got shape {wire.shape}")
    return base64.b64encode(wire.tobytes()).decode("ascii")


def f32_to_s16(samples: npt.ArrayLike) -> npt.NDArray[np.int16]:
    """Convert float samples in [-1, 1] to int16, rounding and clipping; NaN becomes 0."""
    x = np.asarray(samples, dtype=np.float32)
    # NaN/inf would make the int cast undefined (and warn); map them before scaling.
    x = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
    scaled = np.rint(x * np.float32(_S16_SCALE))
    s16: npt.NDArray[np.int16] = np.clip(scaled, -32768, 32767).astype(np.int16)
    return s16


def s16_to_f32(samples: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Convert int16 samples to float32 in [-1, 1)."""
    x = np.asarray(samples)
    if x.dtype != np.int16:
        raise TypeError(f"expected int16 samples, got {x.dtype}")
    return x.astype(np.float32) / np.float32(_S16_SCALE)
