"""Exact rollback against MiniCPM-o 2.6's own remote code (opt-in: a tiny random-weight snapshot of it).

Set OMNI_REAL_CODE_MODEL to a local snapshot directory (the real `modeling_minicpmo.py` with small
random weights; no weights are downloaded). The model's code places some tensors on CUDA by name; on a
machine without CUDA, those placements are redirected to the CPU for the duration of the test.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch

from omni_server.engine.base import Engine, EngineInfo
from omni_server.engine.worker import Conversation, EngineWorker

MODEL_DIR = os.environ.get("OMNI_REAL_CODE_MODEL")
pytestmark = [
    pytest.mark.skipif(not MODEL_DIR, reason="set OMNI_REAL_CODE_MODEL to a snapshot of MiniCPM-o 2.6's code"),
    pytest.mark.filterwarnings("ignore::SyntaxWarning", "ignore::UserWarning", "ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]


@contextlib.contextmanager
def cuda_on_cpu() -> Iterator[None]:
    """Send the remote code's `.cuda()` / `.to("cuda")` to the CPU when there is no CUDA."""
    if torch.cuda.is_available():
        yield
        return
    tensor_to, module_to, tensor_cuda = torch.Tensor.to, torch.nn.Module.to, torch.Tensor.cuda

    def fix(args: tuple[Any, ...]) -> tuple[Any, ...]:
        return ("cpu", *args[1:]) if args and str(args[0]).startswith("cuda") else args

    torch.Tensor.cuda = lambda self, *a, **k: tensor_to(self, "cpu")  # type: ignore[method-assign]
    torch.Tensor.to = lambda self, *a, **k: tensor_to(self, *fix(a), **k)  # type: ignore[method-assign]
    torch.nn.Module.to = lambda self, *a, **k: module_to(self, *fix(a), **k)  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.cuda, torch.Tensor.to, torch.nn.Module.to = tensor_cuda, tensor_to, module_to  # type: ignore[method-assign]


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    from transformers import AutoModel, AutoTokenizer

    assert MODEL_DIR is not None
    with cuda_on_cpu(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModel.from_pretrained(
            MODEL_DIR, trust_remote_code=True, attn_implementation="sdpa", torch_dtype=torch.float32
        ).eval()
        tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR, trust_remote_code=True)
        model.init_tts()
        info = EngineInfo("minicpm-o-2.6", MODEL_DIR, "cpu", "fp32", replies_are_noise=True)
        yield Engine(model, tokenizer, info)


@pytest.fixture
async def worker(engine: Engine) -> AsyncIterator[EngineWorker]:
    with cuda_on_cpu():
        w = EngineWorker(engine)
        yield w
        w.close()


def speech(seed: int, seconds: float) -> npt.NDArray[np.float32]:
    return np.random.default_rng(seed).normal(0, 0.1, int(seconds * 16_000)).astype(np.float32)


def user(audio: npt.NDArray[np.float32]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [audio]}]


async def seeded_reply(worker: EngineWorker, conv: Conversation, seed: int) -> tuple[str, npt.NDArray[np.float32]]:
    """A reply drawn from torch's global generator seeded just before it (the real code samples from it)."""
    await worker.run(conv, lambda m: torch.manual_seed(seed))
    stream = await worker.reply(conv, max_new_tokens=24)
    text, audio = [], [np.zeros(0, np.float32)]
    while (chunk := await stream.next(read_ahead=True)) is not None:
        text.append(chunk.text)
        audio.append(chunk.audio)
    return "".join(text), np.concatenate(audio)


async def conversation(worker: EngineWorker, conv: Conversation, *, speculate: bool) -> list[Any]:
    """Two 2.6-s turns; with `speculate`, a reply is started and dropped in a pause inside each turn."""
    sys_msg = await worker.run(conv, lambda m: m.get_sys_prompt(mode="audio_assistant", language="en"))
    await worker.prefill(conv, [sys_msg])
    replies: list[Any] = []
    for turn in range(2):
        audio = speech(200 + turn, 2.6)
        for i in range(2):
            await worker.prefill(conv, user(audio[i * 16_000 : (i + 1) * 16_000]))
            if speculate and i == 0:
                saved = await worker.checkpoint(conv)
                await worker.prefill(conv, user(audio[16_000:24_000]))
                await worker.run(conv, lambda m: torch.manual_seed(99))
                stream = await worker.reply(conv, speculative=True, max_new_tokens=24)
                assert await stream.next(read_ahead=True) is not None
                await stream.close()
                await worker.rollback(conv, saved)
        await worker.prefill(conv, user(audio[32_000:]))
        replies.append(await seeded_reply(worker, conv, seed=turn))
    return replies


async def test_dropped_speculation_leaves_the_real_model_as_it_was(worker: EngineWorker) -> None:
    """On the real code, dropped speculations change neither the later replies nor the KV cache."""
    plain, speculated = worker.open("call"), worker.open("call")
    expected = await conversation(worker, plain, speculate=False)
    got = await conversation(worker, speculated, speculate=True)
    for (text_a, audio_a), (text_b, audio_b) in zip(expected, got, strict=True):
        assert text_a == text_b
        np.testing.assert_array_equal(audio_a, audio_b)
    assert plain.context_tokens == speculated.context_tokens > 0

    def cache(m: Any) -> list[torch.Tensor]:
        return [t for layer in m.llm_past_key_values for t in layer]

    for a, b in zip(await worker.run(plain, cache), await worker.run(speculated, cache), strict=True):
        assert torch.equal(a, b)


async def test_the_real_audio_encoder_cache_grows_in_place(worker: EngineWorker) -> None:
    """Why a checkpoint copies containers: the real streaming encoder's cache object changes under a reference."""
    conv = worker.open("call")
    sys_msg = await worker.run(conv, lambda m: m.get_sys_prompt(mode="audio_assistant", language="en"))
    await worker.prefill(conv, [sys_msg])
    await worker.prefill(conv, user(speech(1, 1.0)))

    def refs(m: Any) -> tuple[Any, int]:
        return m.audio_past_key_values, m.audio_past_key_values[0][0].shape[2]

    cache, length = await worker.run(conv, refs)
    saved = await worker.checkpoint(conv)
    await worker.prefill(conv, user(speech(2, 0.5)))
    assert cache[0][0].shape[2] > length  # the object a bare reference kept has grown
    await worker.rollback(conv, saved)
    assert (await worker.run(conv, refs))[1] == length
