"""What crosses the gateway-replica hop: frames as JPEG, audio as float32, deadlines made relative."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from omni_server.cluster.wire import JpegFrame, absolute_deadline, pack_msgs, relative_deadline, unpack_msgs


def test_frames_travel_as_jpeg_and_come_back_as_images() -> None:
    """A unit's frame becomes JPEG bytes (far smaller than pixels); audio stays float32; text is kept."""
    frame = Image.new("RGB", (640, 480), (40, 120, 200))
    audio = np.linspace(-1, 1, 16000, dtype=np.float64)
    msgs = [{"role": "user", "content": ["<unit>", frame, audio]}]
    packed = pack_msgs(msgs)
    tag, jpeg, samples = packed[0]["content"]
    assert tag == "<unit>" and isinstance(jpeg, JpegFrame) and len(jpeg.data) < 640 * 480 * 3 // 10
    assert samples.dtype == np.float32 and samples.flags.c_contiguous
    image = unpack_msgs(packed)[0]["content"][1]
    assert isinstance(image, Image.Image) and image.size == (640, 480)
    assert max(abs(a - b) for a, b in zip(image.getpixel((320, 240)), (40, 120, 200), strict=True)) <= 4
    assert msgs[0]["content"][1] is frame  # the caller's message is not changed


def test_deadlines_cross_processes_as_seconds_from_now() -> None:
    """An absolute deadline is sent as an offset and rebuilt on the other clock; None and -inf pass as is."""
    assert relative_deadline(12.5, clock=lambda: 10.0) == 2.5
    assert absolute_deadline(2.5, clock=lambda: 100.0) == 102.5
    assert relative_deadline(None) is None and absolute_deadline(None) is None
    assert relative_deadline(-math.inf) == -math.inf and absolute_deadline(-math.inf) == -math.inf
