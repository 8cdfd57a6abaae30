"""The one thread that owns the model, and the conversations it holds.

Every model call runs here; the asyncio loop only awaits futures. MiniCPM-o keeps one conversation's
streaming state on the model object (`STATE_ATTRS`), so before each call the worker swaps the calling
conversation's state in (references only: the KV cache is never copied) and the previous owner's out.
That lets one loaded model serve several conversations, interleaved call by call — including between
the output chunks of a reply, because a reply is pulled one `next()` at a time.

Scheduling is earliest-deadline-first over start-by times: each job carries the time by which it
should start (a unit's prefill within a bound of its arrival; a reply chunk its own compute time before
the listener runs out of audio; a reply's first chunk shortly after the user's turn ended; the caller
computes these, see session.py and docs/capacity.md). Short prefills and chunks for listeners about to
run dry overtake chunks for listeners who are still well supplied. Deadlines are absolute times, so a
waiting job only grows more urgent relative to newer ones and nobody starves; equal deadlines go in
arrival order. Jobs are not preempted: one call is one model step (a prefill or one output chunk).
A reply keeps its next step queued while the current one runs (`ReplyStream.next(read_ahead=True)`):
otherwise, the moment a chunk finished, the worker would start whatever else was waiting (another
reply's ~1 s first chunk, say) before the session had even asked for the next chunk of a listener
about to run dry.

Must not import: sockets, websockets, aiortc, omni_server.session, omni_server.transport.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from omni_server.engine.base import (
    INPUT_SAMPLE_RATE_HZ,
    Engine,
    EngineInfo,
    OmniModel,
    OutputChunk,
    context_tokens,
    to_output_chunk,
)
from omni_server.errors import EngineError, ReplyFailed

logger = logging.getLogger(__name__)
T = TypeVar("T")
_END = object()


@dataclass(eq=False)
class Conversation:
    """One conversation's place on the model: its MiniCPM-o `session_id` and its swapped-out state."""

    id: str
    state: dict[str, Any] | None = None  # None: live on the model, or never started
    closed: bool = False
    compute_s: float = 0.0  # model time spent on this conversation so far
    context_tokens: int = 0  # LLM KV length after the last call


@dataclass(order=True)
class _Job:
    deadline: float
    seq: int
    conv: Conversation = field(compare=False)
    fn: Callable[[OmniModel], Any] = field(compare=False)
    future: asyncio.Future[Any] = field(compare=False)
    loop: asyncio.AbstractEventLoop = field(compare=False)
    kind: str = field(compare=False, default="call")  # prefill | chunk | call, for timing metrics


class EngineWorker:
    """Runs model calls for many conversations on one thread, with their state swapped in."""

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_timing: Callable[[str, float], None] | None = None,
    ) -> None:
        self.engine = engine
        self._clock = clock
        self._on_timing = on_timing  # (job kind, seconds), called on the worker thread after each model call
        self._jobs: list[_Job] = []
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self._active: Conversation | None = None
        self._stopping = False
        self.busy_s = 0.0  # total model time, for utilisation metrics
        self._thread = threading.Thread(target=self._run_loop, name="engine-worker", daemon=True)
        self._thread.start()

    # ---- asyncio side ------------------------------------------------------------------------------

    @property
    def info(self) -> EngineInfo:
        return self.engine.info

    def open(self, conversation_id: str) -> Conversation:
        return Conversation(id=conversation_id)

    async def run(
        self,
        conv: Conversation,
        fn: Callable[[OmniModel], T],
        *,
        deadline: float | None = None,
        kind: str = "call",
    ) -> T:
        """Run `fn(model)` on the worker thread with `conv`'s state swapped in."""
        return await self.submit(
            conv, fn, deadline=deadline, kind=kind
        )  # cancelling marks the future; the worker skips it

    def now(self) -> float:
        """The clock deadlines are read against."""
        return self._clock()

    def submit(
        self, conv: Conversation, fn: Callable[[OmniModel], T], *, deadline: float | None = None, kind: str = "call"
    ) -> asyncio.Future[T]:
        """Queue `fn(model)` and return its future at once (to queue the next step before awaiting one)."""
        if conv.closed:
            raise EngineError("This conversation has already ended.")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        job = _Job(self._clock() if deadline is None else deadline, next(self._seq), conv, fn, future, loop, kind)
        with self._cv:
            if self._stopping:
                raise EngineError("The engine is shutting down.")
            heapq.heappush(self._jobs, job)
            self._cv.notify()
        return future

    async def prefill(
        self,
        conv: Conversation,
        msgs: list[dict[str, Any]],
        *,
        deadline: float | None = None,
        **kwargs: Any,
    ) -> int:
        """`streaming_prefill` one message; returns the context length afterwards."""
        tokenizer = self.engine.tokenizer

        def call(model: OmniModel) -> int:
            model.streaming_prefill(conv.id, msgs, tokenizer, **kwargs)
            return context_tokens(model)

        return await self.run(conv, call, deadline=deadline, kind="prefill")

    async def reply(self, conv: Conversation, **kwargs: Any) -> ReplyStream:
        """Start `streaming_generate`; the returned stream pulls chunks one call at a time."""
        tokenizer = self.engine.tokenizer

        def start(model: OmniModel) -> Iterator[Any]:
            try:
                return iter(model.streaming_generate(conv.id, tokenizer, **kwargs))
            except Exception as e:
                raise reply_failure(model, e, conv.id) from e

        return ReplyStream(self, conv, await self.run(conv, start))

    async def release(self, conv: Conversation) -> None:
        """Forget a conversation: its KV cache is dropped at once."""
        if conv.closed:
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def drop(model: OmniModel) -> None:
            if self._active is conv:
                model.reset_session()
                self._active = None
            conv.state = None

        job = _Job(float("-inf"), next(self._seq), conv, drop, future, loop)
        with self._cv:
            if self._stopping:
                conv.closed = True
                return
            heapq.heappush(self._jobs, job)
            self._cv.notify()
        try:
            await asyncio.shield(future)
        finally:
            conv.closed = True

    async def warm_up(self) -> None:
        """One prefill and a short reply before serving, to absorb first-call stalls."""
        conv = self.open("warm-up")
        tokenizer = self.engine.tokenizer
        silence = np.zeros(INPUT_SAMPLE_RATE_HZ, np.float32)

        def call(m: OmniModel) -> None:
            m.streaming_prefill(conv.id, [m.get_sys_prompt(mode="omni", language="en")], tokenizer)
            m.streaming_prefill(conv.id, [{"role": "user", "content": [silence]}], tokenizer)
            for _ in itertools.islice(m.streaming_generate(conv.id, tokenizer, max_new_tokens=12), 3):
                pass

        await self.run(conv, call)
        await self.release(conv)

    def close(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(timeout=10)

    # ---- worker thread -----------------------------------------------------------------------------

    def _run_loop(self) -> None:
        while True:
            with self._cv:
                while not self._jobs and not self._stopping:
                    self._cv.wait()
                if self._stopping and not self._jobs:
                    return
                job = heapq.heappop(self._jobs)
            if job.future.cancelled():
                continue
            try:
                result: Any = self._call_direct(job.conv, job.fn, self.engine.model, job.kind)
            except BaseException as e:  # delivered to the awaiting session, which ends itself
                job.loop.call_soon_threadsafe(_deliver_error, job.future, e)
            else:
                job.loop.call_soon_threadsafe(_deliver, job.future, result)

    def _call_direct(self, conv: Conversation, fn: Callable[[OmniModel], Any], model: OmniModel, kind: str) -> Any:
        self._swap_in(conv, model)
        start = time.perf_counter()
        try:
            with self.engine.call_scope():
                return fn(model)
        finally:
            elapsed = time.perf_counter() - start
            conv.compute_s += elapsed
            self.busy_s += elapsed
            conv.context_tokens = context_tokens(model) if self._active is conv else 0
            if self._on_timing is not None:
                self._on_timing(kind, elapsed)

    def _swap_in(self, conv: Conversation, model: OmniModel) -> None:
        if self._active is conv:
            return
        attrs = self.engine.state_attrs
        if self._active is not None:
            self._active.state = {name: getattr(model, name) for name in attrs}
        if conv.state is None:
            model.reset_session()  # a new conversation starts from nothing
        else:
            for name, value in conv.state.items():
                setattr(model, name, value)
            conv.state = None  # live on the model now; no second reference to keep
        self._active = conv


class ReplyStream:
    """A reply being generated: pull chunks with `next()`, drop it with `close()` (barge-in)."""

    def __init__(self, worker: EngineWorker, conv: Conversation, gen: Iterator[Any]) -> None:
        self._worker, self._conv, self._gen = worker, conv, gen
        self._ahead: asyncio.Future[Any] | None = None  # the following step, already queued
        self._queued_until = float("-inf")  # the latest start-by of a queued step: later ones never go before it
        self.step_s = 0.0  # model time of the latest step (how early the next one should start)
        self.finished = False

    async def next(self, *, deadline: float | None = None, read_ahead: bool = False) -> OutputChunk | None:
        """The next chunk, or None when the model has finished the reply.

        `deadline` is the step's start-by time (a step queued ahead keeps the one it was queued with).
        `read_ahead` also queues the following step now, due at the same time: it is needed no later
        than this one, and queued behind it, so the steps run in order."""
        if self.finished:
            return None
        # Steps of one reply must run in the order they were queued: each takes the generator's next item.
        due = max(self._worker.now() if deadline is None else deadline, self._queued_until)
        self._queued_until = due
        pending = self._ahead or self._worker.submit(self._conv, self._step, deadline=due, kind="chunk")
        self._ahead = self._worker.submit(self._conv, self._step, deadline=due, kind="chunk") if read_ahead else None
        try:
            item = await pending
        except EngineError:
            self._drop_ahead()
            self.finished = True
            raise
        if item is _END:
            self._drop_ahead()
            self.finished = True
            return None
        chunk: OutputChunk = item
        return chunk

    def _step(self, model: OmniModel) -> Any:
        start = time.perf_counter()
        try:
            item = next(self._gen, _END)  # a closed or exhausted generator gives _END
        except Exception as e:  # the generator is over; whether the call can go on is decided here
            raise reply_failure(model, e, self._conv.id) from e
        finally:
            self.step_s = time.perf_counter() - start
        return _END if item is _END else to_output_chunk(item, self._worker.engine.clean_text)

    def _drop_ahead(self) -> None:
        if self._ahead is not None:
            self._ahead.cancel()  # the worker skips it if it has not started
            self._ahead = None

    async def close(self) -> None:
        """Abandon the reply. The generator is closed on the worker thread and never resumed."""
        self._drop_ahead()
        if self.finished:
            return
        self.finished = True
        gen = self._gen
        if self._conv.closed:
            return

        def stop(_: OmniModel) -> None:
            close = getattr(gen, "close", None)
            if close is not None:
                close()

        await self._worker.run(self._conv, stop, deadline=float("-inf"))


# What a broken device or runtime says: after these the model's state cannot be trusted for anyone.
_FATAL_MARKERS = ("CUDA error", "device-side assert", "out of memory", "CUBLAS_STATUS", "MPS backend")


def reply_failure(model: OmniModel, exc: Exception, conversation_id: str) -> EngineError:
    """The error a failure while making a reply becomes: `ReplyFailed` when the conversation's state is intact.

    A reply only ever replaces the model's KV cache with a whole new one after each step, so a failure
    inside a step (the real decoder's IndexError on an empty chunk, say) leaves the cache as the last
    step made it, and the next prefill marks the reply as cut, as after a barge-in. That is checked, not
    assumed: every layer's keys and values must still agree on one length. A failure of the device or
    of memory, or a cache that is not whole, ends the call (`EngineError`).
    """
    text = f"{type(exc).__name__}: {exc}"
    fatal = isinstance(exc, MemoryError) or any(marker in text for marker in _FATAL_MARKERS)
    if fatal or not _cache_is_whole(model.llm_past_key_values):
        logger.error("model failure ends the call", exc_info=exc, extra={"session_id": conversation_id})
        return EngineError("The model failed while serving this session.")
    logger.warning("a reply failed, the call goes on", exc_info=exc, extra={"session_id": conversation_id})
    return ReplyFailed(f"The model failed while making this reply ({type(exc).__name__}); the call goes on.")


def _cache_is_whole(cache: Any) -> bool:
    if cache is None:
        return True
    if hasattr(cache, "get_seq_length"):
        cache = cache.to_legacy_cache()
    try:
        lengths = {int(t.shape[2]) for layer in cache for t in layer}
    except (TypeError, AttributeError, IndexError):
        return False
    return len(lengths) == 1


def _deliver(future: asyncio.Future[Any], result: Any) -> None:
    if not future.cancelled():
        future.set_result(result)


def _deliver_error(future: asyncio.Future[Any], exc: BaseException) -> None:
    if future.cancelled():
        return
    if isinstance(exc, EngineError):
        future.set_exception(exc)
        return
    logger.error("model call failed", exc_info=exc)
    err = EngineError("The model failed while serving this session.")
    err.__cause__ = exc
    future.set_exception(err)
