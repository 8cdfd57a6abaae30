"""Still images for the model: decode untrusted camera uploads, wrap WebRTC video frames, encode JPEG.

Owns the validation of image payloads from clients (``ImageFormatError``): size caps checked before
any pixel is decoded, a format allow-list (JPEG, PNG, WebP), Pillow's decompression-bomb guard and a
full decode so truncated files fail here rather than inside the model. Pure PIL + numpy: must not
import torch, sockets, asyncio or anything from ``omni_server`` outside ``media``. Never changes
Pillow's process-wide settings (``MAX_IMAGE_PIXELS``, ``LOAD_TRUNCATED_IMAGES``).
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, UnidentifiedImageError

from omni_server.media.errors import MediaError

__all__ = ["ACCEPTED_FORMATS", "ImageFormatError", "decode_image", "encode_jpeg", "frame_to_image"]

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP")

# What a malformed file can make Pillow's plugins raise while parsing headers or decoding pixels.
_DECODE_ERRORS = (
    OSError,  # includes UnidentifiedImageError and "image file is truncated"
    ValueError,
    SyntaxError,  # some plugins signal a broken header this way
    EOFError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,  # raised rather than warned when warnings are errors
)


class ImageFormatError(MediaError):
    """An image payload from a client is unusable; the message is user-safe."""

    kind = "image"


def decode_image(data: bytes, *, max_bytes: int, max_pixels: int) -> Image.Image:
    """Decode a JPEG, PNG or WebP payload into a fully loaded RGB image, upright per its EXIF tag.

    Raises ``ImageFormatError`` when the payload is empty or larger than ``max_bytes``, is not one of
    the accepted formats, declares more than ``max_pixels`` pixels, or is corrupt or truncated.
    """
    if max_bytes <= 0 or max_pixels <= 0:
        raise ValueError(f"max_bytes and max_pixels must be > 0, got {max_bytes} and {max_pixels}")
    if not data:
        raise ImageFormatError("image is empty")
    if len(data) > max_bytes:
        raise ImageFormatError(f"image too large: {len(data)} bytes, at most {max_bytes} accepted")
    try:
        # open() parses only the header, so the dimensions are checked before any pixel is decoded.
        with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageFormatError(
                    f"image too large: {width}x{height} pixels, at most {max_pixels} pixels accepted"
                )
            image.load()
            upright = ImageOps.exif_transpose(image)  # always a new, detached image
            rgb = upright if upright.mode == "RGB" else upright.convert("RGB")
    except ImageFormatError:
        raise
    except UnidentifiedImageError as e:
        raise ImageFormatError("not a JPEG, PNG or WebP image") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageFormatError(f"image too large: declares more pixels than allowed (at most {max_pixels})") from e
    except _DECODE_ERRORS as e:
        raise ImageFormatError("image is corrupt or truncated") from e
    return rgb


def frame_to_image(rgb: npt.NDArray[np.uint8]) -> Image.Image:
    """Wrap an ``(height, width, 3)`` uint8 RGB video frame, as ``frame.to_ndarray(format="rgb24")`` gives."""
    frame = np.asarray(rgb)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected a (height, width, 3) uint8 RGB frame, got {frame.dtype} {frame.shape}")
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise ValueError(f"frame has no pixels: shape {frame.shape}")
    return Image.fromarray(np.ascontiguousarray(frame))


def encode_jpeg(image: Image.Image, quality: int = 80) -> bytes:
    """Encode an image as baseline JPEG (converted to RGB first if needed)."""
    if not 1 <= quality <= 95:
        raise ValueError(f"JPEG quality must be in 1..95, got {quality}")
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=quality)
    return out.getvalue()
