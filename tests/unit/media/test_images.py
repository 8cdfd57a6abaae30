"""Tests for omni_server.media.images: validating uploads, wrapping video frames, encoding JPEG."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from omni_server.media.images import ImageFormatError, decode_image, encode_jpeg, frame_to_image

MAX_BYTES = 1_000_000
MAX_PIXELS = 4_000_000


def _pattern(height: int = 48, width: int = 64) -> npt.NDArray[np.uint8]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height grey pixels; its pixel data is a few bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + _png_chunk(b"IEND", b"")
    )


def _decode(data: bytes, *, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS) -> Image.Image:
    return decode_image(data, max_bytes=max_bytes, max_pixels=max_pixels)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_decodes_accepted_formats_to_rgb(fmt: str) -> None:
    """JPEG, PNG and WebP decode to a loaded RGB image of the right size."""
    image = _decode(_encode(Image.fromarray(_pattern()), fmt))
    assert image.mode == "RGB"
    assert image.size == (64, 48)


def test_lossless_decode_keeps_pixels() -> None:
    """A PNG comes back pixel for pixel."""
    pixels = _pattern()
    np.testing.assert_array_equal(np.asarray(_decode(_encode(Image.fromarray(pixels), "PNG"))), pixels)


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "LA", "CMYK"])
def test_other_modes_become_rgb(mode: str) -> None:
    """Alpha, grey, palette and CMYK images are converted to RGB."""
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    image = _decode(_encode(Image.fromarray(_pattern()).convert(mode), fmt))
    assert image.mode == "RGB" and image.size == (64, 48)


def test_exif_orientation_is_applied() -> None:
    """A JPEG tagged 'rotate 90' comes back upright (width and height swapped)."""
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    data = _encode(Image.fromarray(_pattern()), "JPEG", exif=exif.tobytes())
    assert _decode(data).size == (48, 64)


def test_refuses_oversize_payload_before_decoding() -> None:
    """Too many bytes is refused on length alone, even for bytes that are no image at all."""
    with pytest.raises(ImageFormatError, match="too large: 2001 bytes"):
        _decode(b"x" * 2001, max_bytes=2000)


def test_refuses_too_many_pixels() -> None:
    """A small, valid PNG of 3000x3000 pixels exceeds a 4-megapixel cap."""
    data = _encode(Image.new("L", (3000, 3000)), "PNG")
    assert len(data) < 50_000
    with pytest.raises(ImageFormatError, match="3000x3000 pixels"):
        _decode(data)


def test_refuses_png_decompression_bomb() -> None:
    """A PNG declaring 100000x100000 pixels trips Pillow's bomb guard and is refused cleanly."""
    with pytest.raises(ImageFormatError, match="too large") as caught:
        _decode(_png_header_only(100_000, 100_000), max_pixels=10**12)
    assert isinstance(caught.value.__cause__, Image.DecompressionBombError)


def test_refuses_truncated_jpeg() -> None:
    """A JPEG cut anywhere after its header fails as corrupt or truncated."""
    data = _encode(Image.fromarray(_pattern()), "JPEG")
    for cut in (len(data) // 3, len(data) // 2, len(data) - 2):
        with pytest.raises(ImageFormatError, match="corrupt or truncated"):
            _decode(data[:cut])


def test_refuses_corrupt_png() -> None:
    """A PNG with a flipped byte in its pixel data fails its checksum."""
    data = bytearray(_encode(Image.fromarray(_pattern()), "PNG"))
    data[len(data) // 2] ^= 0xFF
    with pytest.raises(ImageFormatError, match="corrupt or truncated"):
        _decode(bytes(data))


@pytest.mark.parametrize(
    "data",
    [b"hello, this is not an image", b"\xff\xd8\xff" + b"\x00" * 64, b"{}"],
    ids=["text", "jpeg-magic-only", "json"],
)
def test_refuses_non_images(data: bytes) -> None:
    """Bytes that are not a decodable image are an ImageFormatError."""
    with pytest.raises(ImageFormatError):
        _decode(data)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_refuses_formats_outside_allow_list(fmt: str) -> None:
    """Valid images in other formats are not accepted."""
    with pytest.raises(ImageFormatError, match="not a JPEG, PNG or WebP"):
        _decode(_encode(Image.fromarray(_pattern()), fmt))


def test_refuses_empty_payload() -> None:
    """Zero bytes is an error with its own message."""
    with pytest.raises(ImageFormatError, match="empty"):
        _decode(b"")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_every_truncation_fails_cleanly(fmt: str) -> None:
    """Cut at any of 60 points, a file either decodes or raises ImageFormatError, nothing else."""
    data = _encode(Image.fromarray(_pattern(16, 16)), fmt)
    for cut in np.linspace(0, len(data) - 1, 60).astype(int):
        try:
            _decode(data[:cut])
        except ImageFormatError:
            pass


def test_image_format_error_is_a_value_error() -> None:
    """Callers may catch ImageFormatError as ValueError."""
    assert issubclass(ImageFormatError, ValueError)


def test_frame_to_image_wraps_rgb_frame() -> None:
    """An (h, w, 3) uint8 frame becomes an RGB image with the same pixels."""
    frame = _pattern(30, 40)
    image = frame_to_image(frame)
    assert image.mode == "RGB" and image.size == (40, 30)
    np.testing.assert_array_equal(np.asarray(image), frame)


def test_frame_to_image_accepts_non_contiguous_views() -> None:
    """A cropped view of a larger frame works."""
    frame = _pattern(30, 40)
    np.testing.assert_array_equal(np.asarray(frame_to_image(frame[5:25, ::2])), frame[5:25, ::2])


@pytest.mark.parametrize(
    "frame",
    [
        np.zeros((4, 4, 3), dtype=np.float32),
        np.zeros((4, 4), dtype=np.uint8),
        np.zeros((4, 4, 4), dtype=np.uint8),
    ],
    ids=["float", "grey", "rgba"],
)
def test_frame_to_image_rejects_other_layouts(frame: npt.NDArray[np.generic]) -> None:
    """Only uint8 RGB frames are accepted."""
    with pytest.raises(ValueError, match="uint8 RGB"):
        frame_to_image(frame)  # type: ignore[arg-type]


def test_encode_jpeg_round_trips() -> None:
    """encode_jpeg output is a JPEG that decode_image accepts, close to the original."""
    pixels = np.full((32, 32, 3), (200, 100, 50), dtype=np.uint8)
    data = encode_jpeg(frame_to_image(pixels))
    assert data[:2] == b"\xff\xd8"
    decoded = np.asarray(_decode(data)).astype(int)
    assert np.abs(decoded - pixels).max() <= 4


def test_encode_jpeg_quality_changes_size() -> None:
    """Higher quality gives a bigger file."""
    image = Image.fromarray(_pattern())
    assert len(encode_jpeg(image, quality=20)) < len(encode_jpeg(image, quality=90))


def test_encode_jpeg_converts_alpha() -> None:
    """An RGBA image is flattened to RGB rather than failing."""
    assert encode_jpeg(Image.new("RGBA", (8, 8), (1, 2, 3, 4)))[:2] == b"\xff\xd8"


@pytest.mark.parametrize("quality", [0, 96])
def test_encode_jpeg_rejects_bad_quality(quality: int) -> None:
    """Quality is limited to Pillow's useful range 1..95."""
    with pytest.raises(ValueError, match="quality"):
        encode_jpeg(Image.new("RGB", (8, 8)), quality=quality)
