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

Speculation (a reply started before the user's turn is confirmed, `reply(speculative=True)`) has the
lowest priority and may never make other work late. Its steps wait apart from the deadline queue and
one runs only when its estimated cost (the measured model time of a reply's first step, or of the
reply's latest step) fits before the start-by time of every queued job, and within the notice every
other conversation has asked for (`expect_work`: a caller who is speaking may end the turn any moment
and want its reply soon). Since a step cannot be preempted, the estimate is what keeps a ~1 s
speculative first chunk from sitting in front of another call's due work. `ReplyStream.confirm` turns
the reply's queued steps into ordinary ones with a deadline; `checkpoint`/`rollback` (engine/rollback.py)
put a dropped speculation's conversation back exactly as it was.

Must not import: sockets, websockets, aiortc, omni_server.session, omni_server.transport.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from omni_server.engine import rollback
from omni_server.engine.base import (
    INPUT_SAMPLE_RATE_HZ,
    Engine,
    EngineInfo,
    OmniModel,
    OutputChunk,
    context_tokens,
    to_output_chunk,
)
from omni_server.engine.text import TextPolicy
from omni_server.errors import EngineError, OmniError, ReplyFailed

logger = logging.getLogger(__name__)
T = TypeVar("T")
_END = object()
FIRST_STEP_GUESS_S = 1.0  # a reply's first step before any was measured: MiniCPM-o 2.6's ~1 s, to be safe
_SPECULATION_POLL_S = 0.02  # how often a waiting speculation looks again when nothing else wakes the worker


@dataclass(eq=False)
class Conversation:
    """One conversation's place on the model: its MiniCPM-o `session_id` and its swapped-out state."""

    id: str
    state: dict[str, Any] | None = None  # None: live on the model, or never started
    closed: bool = False
    compute_s: float = 0.0  # model time spent on this conversation so far
    context_tokens: int = 0  # LLM KV length after the last call
    notice_s: float | None = None  # `expect_work`: work may come at any moment, due this soon after


@dataclass(order=True)
class _Job:
    deadline: float
    seq: int
    conv: Conversation = field(compare=False)
    fn: Callable[[OmniModel], Any] = field(compare=False)
    future: asyncio.Future[Any] = field(compare=False)
    loop: asyncio.AbstractEventLoop = field(compare=False)
    kind: str = field(compare=False, default="call")  # prefill | chunk | call, for timing metrics
    cost_s: float = field(compare=False, default=0.0)  # speculative jobs: the model time they are expected to take


class EngineWorker:
    """Runs model calls for many conversations on one thread, with their state swapped in."""

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_timing: Callable[[str, float], None] | None = None,
        on_speculation: Callable[[str], None] | None = None,
    ) -> None:
        self.engine = engine
        self._clock = clock
        self._on_timing = on_timing  # (job kind, seconds), called on the worker thread after each model call
        self.on_speculation = on_speculation  # "started", "used", "discarded": a speculative reply's life
        self._jobs: list[_Job] = []
        self._speculative: list[_Job] = []  # in arrival order, apart from the deadline queue
        self._open: weakref.WeakSet[Conversation] = weakref.WeakSet()  # for other conversations' notice
        self.first_step_s: float | None = None  # model time of a reply's first step, smoothed over replies
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self._active: Conversation | None = None
        self._stopping = False
        self.busy_s = 0.0  # total model time, for utilisation metrics
        self.text = TextPolicy(engine.tokenizer)
        self._thread = threading.Thread(target=self._run_loop, name="engine-worker", daemon=True)
        self._thread.start()

    # ---- asyncio side ------------------------------------------------------------------------------

    @property
    def info(self) -> EngineInfo:
        return self.engine.info

    def open(self, conversation_id: str) -> Conversation:
        conv = Conversation(id=conversation_id)
        self._open.add(conv)
        return conv

    def expect_work(self, conv: Conversation, notice_s: float | None) -> None:
        """`conv` may submit work at any moment that is due `notice_s` after it (None: no such work now).

        A caller sets it while its user speaks (the turn may end, and the reply is due soon after), so
        no speculation of another conversation that takes longer than `notice_s` starts meanwhile."""
        with self._cv:
            conv.notice_s = notice_s
            self._cv.notify()

    async def checkpoint(self, conv: Conversation) -> rollback.Checkpoint:
        """The conversation's model state now, for `rollback` (tensors shared, never copied)."""
        attrs = self.engine.state_attrs
        return await self.run(conv, lambda m: rollback.take(m, attrs, context_tokens(m)))

    async def rollback(self, conv: Conversation, checkpoint: rollback.Checkpoint) -> None:
        """Put the conversation back exactly as it was at `checkpoint`."""
        await self.run(conv, lambda m: rollback.restore(m, checkpoint), deadline=float("-inf"))

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
        self,
        conv: Conversation,
        fn: Callable[[OmniModel], T],
        *,
        deadline: float | None = None,
        kind: str = "call",
        speculative_cost_s: float | None = None,
    ) -> asyncio.Future[T]:
        """Queue `fn(model)` and return its future at once (to queue the next step before awaiting one).

        With `speculative_cost_s` the job is speculative: no deadline, lowest priority (see the module)."""
        if conv.closed:
            raise EngineError("This conversation has already ended.")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        due = float("inf") if speculative_cost_s is not None else self._clock() if deadline is None else deadline
        job = _Job(due, next(self._seq), conv, fn, future, loop, kind, speculative_cost_s or 0.0)
        with self._cv:
            if self._stopping:
                raise EngineError("The engine is shutting down.")
            if speculative_cost_s is not None:
                self._speculative.append(job)
            else:
                heapq.heappush(self._jobs, job)
            self._cv.notify()
        return future

    def _promote(self, future: asyncio.Future[Any], deadline: float) -> None:
        """A speculative job still waiting becomes an ordinary one, due at `deadline`."""
        with self._cv:
            for job in self._speculative:
                if job.future is future:
                    self._speculative.remove(job)
                    job.deadline = deadline
                    heapq.heappush(self._jobs, job)
                    self._cv.notify()
                    return

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
            # Typed text is counted and made inert here, with the model's own tokenizer (engine/text.py).
            model.streaming_prefill(conv.id, self.text.resolve_messages(msgs), tokenizer, **kwargs)
            return context_tokens(model)

        return await self.run(conv, call, deadline=deadline, kind="prefill")

    async def reply(self, conv: Conversation, *, speculative: bool = False, **kwargs: Any) -> ReplyStream:
        """Start `streaming_generate`; the returned stream pulls chunks one call at a time.

        Starting it costs next to nothing (the model's generator is lazy); a speculative reply's steps
        are speculative until `ReplyStream.confirm`."""
        tokenizer = self.engine.tokenizer

        def start(model: OmniModel) -> Iterator[Any]:
            try:
                return iter(model.streaming_generate(conv.id, tokenizer, **kwargs))
            except Exception as e:
                raise reply_failure(model, e, conv.id) from e

        return ReplyStream(self, conv, await self.run(conv, start), speculative=speculative)

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
            self._open.discard(conv)

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
            chunks = iter(m.streaming_generate(conv.id, tokenizer, max_new_tokens=12))
            start = time.perf_counter()
            for n, _ in enumerate(itertools.islice(chunks, 3)):
                if n == 0:
                    self.first_step_s = time.perf_counter() - start

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
                while True:
                    if self._stopping and not self._jobs and not self._speculative:
                        return
                    job, wait_s = self._next_job()
                    if job is not None:
                        break
                    self._cv.wait(wait_s)
            if job.future.cancelled():
                continue
            try:
                result: Any = self._call_direct(job.conv, job.fn, self.engine.model, job.kind)
            except BaseException as e:  # delivered to the awaiting session, which ends itself
                job.loop.call_soon_threadsafe(_deliver_error, job.future, e)
            else:
                job.loop.call_soon_threadsafe(_deliver, job.future, result)

    def _next_job(self) -> tuple[_Job | None, float | None]:
        """The job to run now (called holding the lock), or how long to wait before looking again."""
        self._speculative = [job for job in self._speculative if not job.future.cancelled()]
        if self._speculative and (self._stopping or self._may_speculate(self._speculative[0])):
            return self._speculative.pop(0), None
        if self._jobs:
            return heapq.heappop(self._jobs), None
        return None, _SPECULATION_POLL_S if self._speculative else None

    def _may_speculate(self, job: _Job) -> bool:
        """True when running `job` now makes no queued job start late and fits every other caller's notice."""
        finish = self._clock() + job.cost_s
        if any(queued.deadline < finish and not queued.future.cancelled() for queued in self._jobs):
            return False
        return all(
            conv is job.conv or conv.notice_s is None or job.cost_s <= conv.notice_s for conv in list(self._open)
        )

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

    def __init__(
        self, worker: EngineWorker, conv: Conversation, gen: Iterator[Any], *, speculative: bool = False
    ) -> None:
        self._worker, self._conv, self._gen = worker, conv, gen
        self._pending: asyncio.Future[Any] | None = None  # the step being awaited
        self._ahead: asyncio.Future[Any] | None = None  # the following step, already queued
        self._queued_until = float("-inf")  # the latest start-by of a queued step: later ones never go before it
        self.step_s = 0.0  # model time of the latest step (how early the next one should start)
        self.steps = 0  # steps run so far
        self.finished = False
        self.speculative = speculative  # steps wait for spare model time until `confirm`
        if speculative:
            self._count("started")

    def confirm(self, deadline: float) -> None:
        """The turn is confirmed: queued and later steps are ordinary, the queued ones due at `deadline`."""
        if not self.speculative:
            return
        self.speculative = False
        self._count("used")
        self._queued_until = deadline
        for future in (self._pending, self._ahead):
            if future is not None and not future.done():
                self._worker._promote(future, deadline)

    def _count(self, outcome: str) -> None:
        if self._worker.on_speculation is not None:
            self._worker.on_speculation(outcome)

    def _submit(self, due: float) -> asyncio.Future[Any]:
        if not self.speculative:
            return self._worker.submit(self._conv, self._step, deadline=due, kind="chunk")
        first = self._worker.first_step_s if self._worker.first_step_s is not None else FIRST_STEP_GUESS_S
        cost = first if self.steps == 0 and self._pending is None else self.step_s
        return self._worker.submit(self._conv, self._step, kind="chunk", speculative_cost_s=cost)

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
        pending = self._ahead or self._submit(due)
        self._pending = pending
        self._ahead = self._submit(due) if read_ahead else None
        try:
            item = await pending
        except EngineError:  # the reply failed (ReplyFailed) or the engine did: nothing more to take
            self._pending = None
            self._drop_ahead()
            self.finished = True
            raise
        self._pending = None
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
        if self.steps == 0 and item is not _END:
            last = self._worker.first_step_s
            self._worker.first_step_s = self.step_s if last is None else 0.7 * last + 0.3 * self.step_s
        self.steps += 1
        return _END if item is _END else to_output_chunk(item, self._worker.engine.clean_text)

    def _drop_ahead(self) -> None:
        if self._ahead is not None:
            self._ahead.cancel()  # the worker skips it if it has not started
            self._ahead = None
        if self._pending is not None and self.speculative:
            self._pending.cancel()  # a speculative step nobody will take may never run at all

    async def close(self) -> None:
        """Abandon the reply. The generator is closed on the worker thread and never resumed."""
        self._drop_ahead()
        if self.speculative:
            self.speculative = False
            self._count("discarded")
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
    if isinstance(exc, OmniError):  # the engine's own refusal or failure, already in the caller's terms
        future.set_exception(exc)
        return
    logger.error("model call failed", exc_info=exc)
    err = EngineError("The model failed while serving this session.")
    err.__cause__ = exc
    future.set_exception(err)
