"""Tests for omni_server.media.pcm: strict base64 float32 decoding and int16 conversion."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from omni_server.media.pcm import (
    AudioFormatError,
    decode_f32_base64,
    decode_pcm,
    encode_f32_base64,
    f32_to_s16,
    s16_to_f32,
)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def test_round_trip_is_exact() -> None:
    """Encoding then decoding returns the same float32 samples bit for bit."""
    samples = np.random.default_rng(0).uniform(-1, 1, 1234).astype(np.float32)
    decoded = decode_f32_base64(encode_f32_base64(samples), max_samples=2000)
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, samples)


def test_wire_format_is_little_endian_float32() -> None:
    """1.0 travels as the little-endian IEEE bytes 00 00 80 3f."""
    assert encode_f32_base64(np.array([1.0], dtype=np.float32)) == _b64(b"\x00\x00\x80\x3f")
    assert decode_f32_base64(_b64(b"\x00\x00\x80\xbf"), max_samples=1).tolist() == [-1.0]


def test_decoded_array_is_writable() -> None:
    """The decoded array is a fresh buffer the caller may modify in place."""
    decoded = decode_f32_base64(encode_f32_base64(np.zeros(4, dtype=np.float32)), max_samples=4)
    decoded += 1.0
    assert decoded.tolist() == [1.0] * 4


def test_empty_text_decodes_to_no_samples() -> None:
    """An empty payload is zero samples, not an error."""
    assert decode_f32_base64("", max_samples=10).shape == (0,)


@pytest.mark.parametrize(
    "text",
    ["!!!!", "AAAA\nAAAA", "AAAA AAAA", "AAA", "AAAAA", "AA=A", "-_-_", "ÄÄÄÄ"],
    ids=["symbols", "newline", "space", "short", "bad-length", "mid-padding", "urlsafe", "non-ascii"],
)
def test_rejects_invalid_base64(text: str) -> None:
    """Anything but strict, padded, standard-alphabet base64 is an AudioFormatError."""
    with pytest.raises(AudioFormatError, match="base64"):
        decode_f32_base64(text, max_samples=100)


def test_rejects_byte_length_not_multiple_of_four() -> None:
    """Six bytes are not whole float32 samples."""
    with pytest.raises(AudioFormatError, match="multiple of 4"):
        decode_f32_base64(_b64(b"\x00" * 6), max_samples=100)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_rejects_non_finite_samples(bad: float) -> None:
    """NaN and infinities are refused, with a count in the message."""
    samples = np.array([0.0, bad, 0.5], dtype=np.float32)
    with pytest.raises(AudioFormatError, match="1 NaN or infinite"):
        decode_f32_base64(encode_f32_base64(samples), max_samples=10)


def test_sample_limit_is_inclusive() -> None:
    """Exactly max_samples is accepted; one more is refused."""
    assert decode_f32_base64(encode_f32_base64(np.zeros(10)), max_samples=10).size == 10
    with pytest.raises(AudioFormatError, match="too large"):
        decode_f32_base64(encode_f32_base64(np.zeros(11)), max_samples=10)


def test_oversize_text_is_refused_before_decoding() -> None:
    """A huge payload fails on its length alone, even though it is not valid base64 either."""
    with pytest.raises(AudioFormatError, match="too large"):
        decode_f32_base64("!" * 1_000_000, max_samples=16_000)


def test_audio_format_error_is_a_value_error() -> None:
    """Callers may catch AudioFormatError as ValueError."""
    assert issubclass(AudioFormatError, ValueError)


def test_encode_rejects_multichannel() -> None:
    """Only 1-D mono arrays are encoded."""
    with pytest.raises(ValueError, match="1-D"):
        encode_f32_base64(np.zeros((2, 4), dtype=np.float32))


def test_f32_to_s16_rounds_and_clips() -> None:
    """Floats scale by 32768, round to nearest and clip to the int16 range; NaN becomes 0."""
    x = np.array([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, np.nan, 1.5 / 32768], dtype=np.float32)
    out = f32_to_s16(x)
    assert out.dtype == np.int16
    assert out.tolist() == [-32768, -32768, -16384, 0, 16384, 32767, 32767, 0, 2]


def test_s16_round_trip_is_exact_for_every_value() -> None:
    """s16 -> f32 -> s16 returns every int16 value unchanged, and floats stay in [-1, 1)."""
    everything = np.arange(-32768, 32768, dtype=np.int16)
    floats = s16_to_f32(everything)
    assert floats.dtype == np.float32
    assert floats.min() == -1.0 and floats.max() < 1.0
    np.testing.assert_array_equal(f32_to_s16(floats), everything)


def test_s16_to_f32_rejects_other_dtypes() -> None:
    """Passing floats where int16 is expected is a TypeError, not a silent rescale."""
    with pytest.raises(TypeError, match="int16"):
        s16_to_f32(np.zeros(4, dtype=np.float32))


def test_raw_pcm_decodes_float32_and_int16() -> None:
    """Binary messages' raw samples: little-endian float32 as is, int16 scaled by 1/32768, as fresh arrays."""
    samples = np.array([0.0, -1.0, 0.5, 0.25], dtype=np.float32)
    np.testing.assert_array_equal(decode_pcm(samples.astype("<f4").tobytes(), "f32", max_samples=4), samples)
    s16 = np.array([0, -32768, 16384, 32767], dtype="<i2")
    decoded = decode_pcm(memoryview(s16.tobytes()), "s16", max_samples=4)
    np.testing.assert_array_equal(decoded, s16_to_f32(s16.astype(np.int16)))
    assert decoded.dtype == np.float32 and decoded.flags.writeable


@pytest.mark.parametrize(
    ("data", "sample_format", "match"),
    [
        (b"\x00" * 6, "f32", "multiple of 4"),
        (b"\x00" * 3, "s16", "multiple of 2"),
        (np.zeros(11, "<f4").tobytes(), "f32", "too large"),
        (np.zeros(11, "<i2").tobytes(), "s16", "too large"),
        (np.array([0.0, np.inf], "<f4").tobytes(), "f32", "NaN or infinite"),
    ],
)
def test_raw_pcm_is_validated(data: bytes, sample_format: str, match: str) -> None:
    """Ragged byte lengths, too many samples and non-finite floats are refused with a user-safe message."""
    with pytest.raises(AudioFormatError, match=match):
        decode_pcm(data, sample_format, max_samples=10)


def test_extreme_finite_samples_are_not_mistaken_for_infinite() -> None:
    """The finiteness check sums in float64: the largest float32 values, many of them, still pass."""
    big = np.full(80_000, np.finfo(np.float32).max, dtype="<f4")
    big[::2] *= -1
    np.testing.assert_array_equal(decode_pcm(big.tobytes(), "f32", max_samples=80_000), big)
    np.testing.assert_array_equal(decode_pcm(big[1::2].tobytes(), "f32", max_samples=80_000), big[1::2])
