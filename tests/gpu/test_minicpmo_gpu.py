"""The real MiniCPM-o 2.6 engine on a CUDA GPU, when a local snapshot is named in OMNI_TEST_MODEL."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from omni_server.engine.worker import EngineWorker

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and os.environ.get("OMNI_TEST_MODEL")),
    reason="needs a CUDA GPU and OMNI_TEST_MODEL=<local MiniCPM-o-2_6 directory>",
)


async def test_real_model_streams_speech() -> None:
    """One prefilled second of audio gets 24 kHz float32 speech chunks from the real model."""
    from omni_server.engine.minicpmo import load_minicpmo

    worker = EngineWorker(load_minicpmo(os.environ["OMNI_TEST_MODEL"]))
    try:
        conv = worker.open("gpu-smoke")
        sys_msg = await worker.run(conv, lambda m: m.get_sys_prompt(mode="audio_assistant", language="en"))
        await worker.prefill(conv, [sys_msg])
        await worker.prefill(conv, [{"role": "user", "content": [np.zeros(16000, np.float32)]}])
        stream = await worker.reply(conv, max_new_tokens=32)
        first = await stream.next()
        assert first is not None and first.audio.dtype == np.float32
        await stream.close()
    finally:
        worker.close()
