"""The engine worker: one model thread, many conversations, each with its own state swapped in."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from omni_server.engine.base import OmniModel
from omni_server.engine.tiny import build_tiny_engine
from omni_server.engine.worker import Conversation, EngineWorker
from omni_server.errors import EngineError


@pytest.fixture
async def worker() -> Any:
    w = EngineWorker(build_tiny_engine(seed=7))
    yield w
    w.close()


def unit(seed: int) -> dict[str, Any]:
    audio = np.random.default_rng(seed).normal(0, 0.1, 16000).astype(np.float32)
    return {"role": "user", "content": [audio]}


async def converse(worker: EngineWorker, conv: Conversation, seed: int) -> tuple[str, np.ndarray]:
    sys_msg = await worker.run(conv, lambda m: m.get_sys_prompt(mode="audio_assistant", language="en"))
    await worker.prefill(conv, [sys_msg])
    for i in range(2):
        await worker.prefill(conv, [unit(seed + i)])
    stream = await worker.reply(conv, max_new_tokens=30)
    text, audio = [], []
    while (chunk := await stream.next()) is not None:
        text.append(chunk.text)
        audio.append(chunk.audio)
    return "".join(text), np.concatenate(audio)


async def test_new_conversation_starts_from_its_own_system_prompt(worker: EngineWorker) -> None:
    """After one conversation, the next one's cache holds its system prompt and nothing else."""
    first = worker.open("call-1")
    await converse(worker, first, seed=1)
    assert first.context_tokens > 100
    await worker.release(first)

    second = worker.open("call-2")
    sys_msg = await worker.run(second, lambda m: m.get_sys_prompt(mode="audio_assistant", language="en"))
    after = await worker.prefill(second, [sys_msg])
    prompt = await worker.run(second, lambda m: m.last_prompt_text)
    assert prompt.startswith("<|im_start|>user\n") and prompt.endswith("<|im_end|>\n")

    alone = EngineWorker(build_tiny_engine(seed=7))
    try:
        reference = alone.open("fresh")
        assert after == await alone.prefill(reference, [sys_msg])
    finally:
        alone.close()


async def test_interleaved_conversations_get_what_they_get_alone() -> None:
    """Two conversations interleaved call by call produce exactly what each produces alone."""
    import asyncio

    solo = EngineWorker(build_tiny_engine(seed=3))
    try:
        expected = [await converse(solo, solo.open(f"c{i}"), seed=10 * i) for i in range(2)]
    finally:
        solo.close()
    shared = EngineWorker(build_tiny_engine(seed=3))
    try:
        results = await asyncio.gather(*(converse(shared, shared.open(f"c{i}"), seed=10 * i) for i in range(2)))
    finally:
        shared.close()
    for (text, audio), (want_text, want_audio) in zip(results, expected, strict=True):
        assert text == want_text
        np.testing.assert_array_equal(audio, want_audio)


async def test_a_failing_call_ends_one_conversation_only(worker: EngineWorker) -> None:
    """A model call that raises gives that conversation an EngineError; others go on."""
    broken, healthy = worker.open("broken"), worker.open("healthy")

    def boom(model: OmniModel) -> None:
        raise RuntimeError("CUDA out of memory (simulated)")

    with pytest.raises(EngineError) as info:
        await worker.run(broken, boom)
    assert "CUDA" not in info.value.message
    text, audio = await converse(worker, healthy, seed=5)
    assert audio.size > 0


async def test_release_frees_the_cache(worker: EngineWorker) -> None:
    """Releasing a conversation drops its KV cache and refuses further calls."""
    conv = worker.open("gone")
    await converse(worker, conv, seed=2)
    await worker.release(conv)
    assert conv.closed and conv.state is None
    with pytest.raises(EngineError):
        await worker.prefill(conv, [unit(0)])


async def reply_chunks(worker: EngineWorker, conv: Conversation, *, read_ahead: bool) -> list[np.ndarray]:
    await converse_prefix(worker, conv)
    stream = await worker.reply(conv, max_new_tokens=30)
    chunks, deadline = [], 1e9
    while (chunk := await stream.next(deadline=deadline, read_ahead=read_ahead)) is not None:
        chunks.append(chunk.audio)
        deadline -= 1e6  # later steps asked for earlier than queued ones must still run in order
    return chunks


async def converse_prefix(worker: EngineWorker, conv: Conversation) -> None:
    sys_msg = await worker.run(conv, lambda m: m.get_sys_prompt(mode="audio_assistant", language="en"))
    await worker.prefill(conv, [sys_msg])
    await worker.prefill(conv, [unit(1)])


async def test_read_ahead_keeps_the_chunks_in_order(worker: EngineWorker) -> None:
    """Queuing each next step ahead, even with ever earlier deadlines, yields exactly the plain sequence."""
    ahead = await reply_chunks(worker, worker.open("same"), read_ahead=True)
    plain_worker = EngineWorker(build_tiny_engine(seed=7))
    try:
        plain = await reply_chunks(plain_worker, plain_worker.open("same"), read_ahead=False)
    finally:
        plain_worker.close()
    assert len(ahead) == len(plain) > 3
    for a, p in zip(ahead, plain, strict=True):
        np.testing.assert_array_equal(a, p)


async def test_read_ahead_step_goes_before_a_later_job_of_another_call(worker: EngineWorker) -> None:
    """The step queued ahead is already waiting when the current one ends, so a less urgent job of
    another call (queued while the worker was busy) runs after both, not in between."""
    import asyncio
    import threading

    speaker, other = worker.open("speaker"), worker.open("other")
    await converse_prefix(worker, speaker)
    stream = await worker.reply(speaker, max_new_tokens=30)
    order: list[str] = []
    step = stream._step

    def recorded_step(model: OmniModel) -> Any:
        order.append("speaker")
        return step(model)

    stream._step = recorded_step  # type: ignore[method-assign]
    gate = threading.Event()
    blocked = worker.submit(other, lambda m: gate.wait(5), deadline=0.0)  # hold the worker
    first = asyncio.ensure_future(stream.next(deadline=10.0, read_ahead=True))
    await asyncio.sleep(0)  # let next() queue its two steps
    later = worker.submit(other, lambda m: order.append("other"), deadline=20.0)
    gate.set()
    await blocked
    await first
    await later
    assert order == ["speaker", "speaker", "other"]
    await stream.close()


def test_a_failure_inside_a_reply_ends_only_the_reply_when_the_state_is_whole() -> None:
    """The decoder's IndexError with a whole cache is ReplyFailed; a device failure or a torn cache ends the call."""
    import torch

    from omni_server.engine.worker import reply_failure
    from omni_server.errors import ReplyFailed

    class Model:
        llm_past_key_values: Any = ((torch.zeros(1, 2, 7, 4), torch.zeros(1, 2, 7, 4)),) * 2

    model: Any = Model()
    decode = IndexError("index 0 is out of bounds for dimension 0 with size 0")
    failed = reply_failure(model, decode, "c")
    assert isinstance(failed, ReplyFailed) and "IndexError" in failed.message
    for fatal in (RuntimeError("CUDA error: device-side assert triggered"), MemoryError()):
        assert type(reply_failure(model, fatal, "c")) is EngineError
    model.llm_past_key_values = ((torch.zeros(1, 2, 7, 4), torch.zeros(1, 2, 6, 4)),)
    assert type(reply_failure(model, decode, "c")) is EngineError


async def test_a_failed_reply_stream_stops_and_the_conversation_continues() -> None:
    """A reply failing mid-way raises ReplyFailed from next(), is finished, and the next prefill and reply work."""
    from omni_server.errors import ReplyFailed

    faulty = EngineWorker(build_tiny_engine(seed=7, faults=1.0))
    try:
        conv = faulty.open("c")
        sys_msg = await faulty.run(conv, lambda m: m.get_sys_prompt(mode="audio_assistant", language="en"))
        await faulty.prefill(conv, [sys_msg])
        await faulty.prefill(conv, [unit(1)])
        stream = await faulty.reply(conv, max_new_tokens=30)
        with pytest.raises(ReplyFailed):
            await stream.next(read_ahead=True)
        assert stream.finished and await stream.next() is None
        before = conv.context_tokens
        assert await faulty.prefill(conv, [unit(2)]) > before
    finally:
        faulty.close()
