"""Usage counts what the model consumed: a frame costs 66 tokens, 198 when vision_hd slices it (640×480)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from omni_server.app import OmniServer
from omni_server.engine.tiny import build_tiny_engine
from tests.conftest import server_settings
from tests.integration.realtime_client import RawClient


def jpeg(width: int, height: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 90)).save(buffer, format="JPEG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize(("hd", "per_frame"), [(False, 66), (True, 198)])
async def test_vision_and_audio_tokens_are_what_the_model_took(tmp_path: Path, hd: bool, per_frame: int) -> None:
    """Two 1-s units with a 640×480 frame each, then a 0.5 s tail: vision = frames × the processor's cost, audio =
    27 per second plus the tail's 14, and both within the measured input tokens."""
    async with OmniServer(server_settings(tmp_path), build_tiny_engine(seed=0)) as server:
        client = await RawClient.connect(server, mode="video")
        await client.start(turn_detection={"type": "none"}, config={"vision_hd": hd})
        noise = np.random.default_rng(0).uniform(-0.3, 0.3, 40_000).astype(np.float32)
        for start in (0, 16_000):
            await client.append(noise[start : start + 16_000], video_frames=[jpeg(640, 480)])
        await client.append(noise[32_000:40_000])
        await client.send("input.commit")
        usage = (await client.until("response.done"))["response"]["usage"]
        details = usage["input_tokens_details"]
        assert details["vision_tokens"] == 3 * per_frame  # the tail's unit takes the latest frame too
        assert details["audio_tokens"] == 27 + 27 + 14  # 0.5 s: 12 audio tokens and their 2 tags
        assert details["vision_tokens"] + details["audio_tokens"] < usage["input_tokens"]
        await client.close()
