"""Exact rollback: a dropped speculative reply leaves the conversation as if it had never existed."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from omni_server.engine import rollback
from omni_server.engine.base import OmniModel
from omni_server.engine.tiny import build_tiny_engine
from omni_server.engine.worker import Conversation, EngineWorker

SEED = 11


@pytest.fixture
async def worker() -> AsyncIterator[EngineWorker]:
    w = EngineWorker(build_tiny_engine(seed=SEED))
    yield w
    w.close()


def speech(seed: int, seconds: float) -> npt.NDArray[np.float32]:
    return np.random.default_rng(seed).normal(0, 0.1, int(seconds * 16_000)).astype(np.float32)


def user(audio: npt.NDArray[np.float32]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [audio]}]


async def start(worker: EngineWorker, conv: Conversation) -> None:
    sys_msg = await worker.run(conv, lambda m: m.get_sys_prompt(mode="audio_assistant", language="en"))
    await worker.prefill(conv, [sys_msg])


async def reply(worker: EngineWorker, conv: Conversation) -> tuple[str, npt.NDArray[np.float32]]:
    stream = await worker.reply(conv, max_new_tokens=40)
    text, audio = [], []
    while (chunk := await stream.next(read_ahead=True)) is not None:
        text.append(chunk.text)
        audio.append(chunk.audio)
    return "".join(text), np.concatenate(audio)


async def kv(worker: EngineWorker, conv: Conversation) -> list[torch.Tensor]:
    return await worker.run(conv, lambda m: [t for layer in m.llm_past_key_values for t in layer])


async def conversation(worker: EngineWorker, conv: Conversation, *, speculate: bool) -> list[Any]:
    """Two turns of 2.6 s each; with `speculate`, a reply is started and dropped at every pause inside them."""
    await start(worker, conv)
    replies: list[Any] = []
    for turn in range(2):
        audio = speech(100 + turn, 2.6)
        units, tail = [audio[:16_000], audio[16_000:32_000]], audio[32_000:]
        for i, unit in enumerate(units):
            await worker.prefill(conv, user(unit))
            if speculate and i == 0:  # a pause after the first second: speculate, then the user goes on
                saved = await worker.checkpoint(conv)
                await worker.prefill(conv, user(audio[16_000:24_000]))  # the partial unit so far
                stream = await worker.reply(conv, speculative=True, max_new_tokens=40)
                for _ in range(3):
                    assert await stream.next(read_ahead=True) is not None
                await stream.close()
                await worker.rollback(conv, saved)
        await worker.prefill(conv, user(tail))
        replies.append(await reply(worker, conv))
    return replies


async def test_discarded_speculations_leave_no_trace(worker: EngineWorker) -> None:
    """With dropped speculations, replies are token for token the same and the KV cache is identical."""
    plain, speculated = worker.open("call"), worker.open("call")  # same id: same sampling seed
    expected = await conversation(worker, plain, speculate=False)
    got = await conversation(worker, speculated, speculate=True)
    for (text_a, audio_a), (text_b, audio_b) in zip(expected, got, strict=True):
        assert text_a == text_b and text_a
        np.testing.assert_array_equal(audio_a, audio_b)
    assert plain.context_tokens == speculated.context_tokens
    for a, b in zip(await kv(worker, plain), await kv(worker, speculated), strict=True):
        assert torch.equal(a, b)


async def test_a_bare_reference_snapshot_is_not_enough(worker: EngineWorker) -> None:
    """The audio encoder's cache grows in place during a turn, so only a copied checkpoint keeps it."""
    conv = worker.open("call")
    await start(worker, conv)
    await worker.prefill(conv, user(speech(1, 1.0)))

    def refs(m: OmniModel) -> tuple[Any, int]:
        return m.audio_past_key_values, m.audio_past_key_values.get_seq_length()

    cache, length = await worker.run(conv, refs)
    saved = await worker.checkpoint(conv)
    await worker.prefill(conv, user(speech(2, 0.5)))
    assert cache.get_seq_length() > length  # what a reference saw has changed under it
    await worker.rollback(conv, saved)
    assert (await worker.run(conv, refs))[1] == length


def test_checkpoint_copies_real_cache_containers_and_shares_tensors() -> None:
    """The real encoder's EncoderDecoderCache is copied down to its lists; its tensors are the same objects."""
    inner = DynamicCache()
    key = torch.ones(1, 2, 5, 4)
    inner.update(key, key + 1, 0)
    cache = EncoderDecoderCache(inner, DynamicCache())
    copied = rollback.copy_state(cache)
    inner.update(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4), 0)  # what the next prefill does
    assert cache.self_attention_cache.get_seq_length() == 8
    assert copied.self_attention_cache.get_seq_length() == 5
    assert copied.self_attention_cache.key_cache[0] is key


def test_checkpoint_clones_the_sampling_generator() -> None:
    """A checkpointed torch.Generator replays the same draws after the original has moved on."""
    rng = torch.Generator().manual_seed(3)
    copied = rollback.copy_state(rng)
    first = torch.rand(4, generator=rng)
    assert torch.equal(torch.rand(4, generator=copied), first)


def test_unknown_state_is_refused() -> None:
    """An unknown mutable object in the model state raises instead of being shared silently."""
    with pytest.raises(TypeError, match="teach engine/rollback.py"):
        rollback.copy_state(object())


# ---- priority ---------------------------------------------------------------------------------------


async def spare_reply(worker: EngineWorker, conv: Conversation) -> Any:
    await start(worker, conv)
    await worker.prefill(conv, user(speech(5, 1.0)))
    return await worker.reply(conv, speculative=True, max_new_tokens=12)


async def test_speculation_waits_while_another_caller_may_need_the_model(worker: EngineWorker) -> None:
    """A speculative step does not start while another conversation asked for less notice than it costs."""
    speaker, speculator = worker.open("a"), worker.open("b")
    stream = await spare_reply(worker, speculator)
    worker.first_step_s = 1.0  # as MiniCPM-o 2.6's first chunk
    worker.expect_work(speaker, 0.5)  # speaking: its reply may be due 0.5 s after its turn ends
    step = asyncio.ensure_future(stream.next())
    await asyncio.sleep(0.1)  # several of the worker's looks at the waiting speculation
    assert not step.done()
    worker.expect_work(speaker, None)
    assert await asyncio.wait_for(step, 10) is not None


async def test_speculation_runs_in_the_slack_before_queued_work(worker: EngineWorker) -> None:
    """A speculative step goes ahead of a queued job only when it ends before that job's start-by time."""
    other, speculator = worker.open("a"), worker.open("b")
    stream = await spare_reply(worker, speculator)
    await start(worker, other)
    started, hold = threading.Event(), threading.Event()

    def busy(_: OmniModel) -> None:
        started.set()
        hold.wait(10)

    blocking = asyncio.ensure_future(worker.run(other, busy))
    await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)  # the worker is inside `busy`
    worker.first_step_s = 0.05
    seen: dict[str, int] = {}  # speculative steps run before each ordinary job, read on the worker thread
    soon = worker.run(other, lambda m: seen.setdefault("due now", stream.steps), deadline=worker.now())
    later = worker.run(other, lambda m: seen.setdefault("due later", stream.steps), deadline=worker.now() + 30)
    jobs = asyncio.gather(blocking, soon, stream.next(), later)
    hold.set()
    await asyncio.wait_for(jobs, 10)
    assert seen == {"due now": 0, "due later": 1}


async def test_confirm_makes_a_waiting_speculation_ordinary(worker: EngineWorker) -> None:
    """Confirmed, a reply's waiting step runs by its deadline even while another caller is speaking."""
    speaker, speculator = worker.open("a"), worker.open("b")
    stream = await spare_reply(worker, speculator)
    worker.first_step_s = 1.0
    worker.expect_work(speaker, 0.5)
    step = asyncio.ensure_future(stream.next(read_ahead=True))
    await asyncio.sleep(0.05)
    assert not step.done()
    stream.confirm(worker.now())
    assert await asyncio.wait_for(step, 10) is not None
    assert await asyncio.wait_for(stream.next(), 10) is not None  # the step queued ahead was promoted too
