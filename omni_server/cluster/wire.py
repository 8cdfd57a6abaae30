"""What crosses the gateway <-> replica hop, and how it is kept compact.

Ray serialises arguments and results itself (numpy arrays as raw float32 buffers, out of band, no
base64, no JSON), so audio units and reply chunks travel as they are. Two things are adapted here:
camera frames, which the session holds as decoded PIL images, go as JPEG bytes (a 640x480 frame is
~40 KB instead of 900 KB of pixels); and a replica's answer carries the conversation's progress
(context length, model time) so the gateway's handle stays current without another round trip.

Must not import: ray, websockets, aiortc, omni_server.session, omni_server.transport.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

JPEG_QUALITY = 92  # frames came from the client as JPEG already; this keeps the re-encode near-lossless


@dataclass(frozen=True)
class JpegFrame:
    """A camera frame on the wire."""

    data: bytes


@dataclass(frozen=True)
class Progress:
    """A conversation's state after a replica call, mirrored into the gateway's handle."""

    context_tokens: int
    compute_s: float


def pack_msgs(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Frames to JPEG and audio to contiguous float32, for a prefill's messages (CPU work: run off the loop)."""
    return [{**msg, "content": [_pack(item) for item in msg["content"]]} for msg in msgs]


def unpack_msgs(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**msg, "content": [_unpack(item) for item in msg["content"]]} for msg in msgs]


def has_frames(msgs: list[dict[str, Any]]) -> bool:
    return any(isinstance(item, Image.Image) for msg in msgs for item in msg["content"])


def _pack(item: Any) -> Any:
    if isinstance(item, Image.Image):
        out = io.BytesIO()
        item.convert("RGB").save(out, format="JPEG", quality=JPEG_QUALITY)
        return JpegFrame(out.getvalue())
    if isinstance(item, np.ndarray):
        return np.ascontiguousarray(item, dtype=np.float32)
    return item


def _unpack(item: Any) -> Any:
    if isinstance(item, JpegFrame):
        image = Image.open(io.BytesIO(item.data))
        image.load()
        return image
    return item


def relative_deadline(deadline: float | None, *, clock: Callable[[], float] = time.monotonic) -> float | None:
    """An absolute deadline of this process as seconds from now (clocks differ between machines)."""
    if deadline is None or math.isinf(deadline):
        return deadline
    return deadline - clock()


def absolute_deadline(seconds_from_now: float | None, *, clock: Callable[[], float] = time.monotonic) -> float | None:
    if seconds_from_now is None or math.isinf(seconds_from_now):
        return seconds_from_now
    return clock() + seconds_from_now
