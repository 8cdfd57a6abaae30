"""The interface a call uses from its engine: what `CallSession` may ask, local or remote alike.

`EngineWorker` (the model's thread in this process) satisfies it, and so does the cluster gateway's
per-call client (`omni_server.cluster.gateway`), which forwards every call to an engine replica on
Ray Serve. Speculative replies with exact rollback (`SpeculativeEngine`) are the local worker's alone;
a session checks for them and does without on an engine that lacks them. Code above the engine is written against these protocols, so it never knows which one
it talks to. A conversation handle carries the two figures the session reads after each call.

Must not import: sockets, websockets, aiortc, ray, omni_server.session, omni_server.transport.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

from omni_server.engine.base import EngineInfo, OmniModel, OutputChunk

T = TypeVar("T")
C = TypeVar("C", bound="ConversationHandle")
C_contra = TypeVar("C_contra", bound="ConversationHandle", contravariant=True)


class ConversationHandle(Protocol):
    """One model conversation as the caller sees it, refreshed after every engine call."""

    @property
    def id(self) -> str: ...

    @property
    def context_tokens(self) -> int: ...  # LLM KV length after the last call

    @property
    def compute_s(self) -> float: ...  # model time spent on this conversation so far


class ReplyChunks(Protocol):
    """A reply being generated: `next()` until None; `close()` abandons it (barge-in)."""

    finished: bool
    step_s: float  # model time of the latest chunk: the next one should start that much before it is needed

    async def next(self, *, deadline: float | None = None, read_ahead: bool = False) -> OutputChunk | None: ...

    async def close(self) -> None: ...


class EngineClient(Protocol[C]):
    """Model calls for conversations; deadlines are `time.monotonic()` times in the caller's process."""

    @property
    def info(self) -> EngineInfo: ...

    def open(self, conversation_id: str) -> C: ...

    async def run(self, conv: C, fn: Callable[[OmniModel], T], *, deadline: float | None = None) -> T: ...

    async def prefill(
        self, conv: C, msgs: list[dict[str, Any]], *, deadline: float | None = None, **kwargs: Any
    ) -> int: ...

    async def reply(self, conv: C, **kwargs: Any) -> ReplyChunks: ...

    async def release(self, conv: C) -> None: ...

    async def warm_up(self) -> None: ...

    def close(self) -> None: ...


class SpeculativeReply(ReplyChunks, Protocol):
    """A reply whose steps use spare model time only, until `confirm` makes them ordinary work."""

    speculative: bool

    def confirm(self, deadline: float) -> None: ...


@runtime_checkable
class SpeculativeEngine(Protocol[C_contra]):
    """What speculation needs besides `EngineClient` (engine/worker.py, engine/rollback.py)."""

    async def checkpoint(self, conv: C_contra) -> Any: ...

    async def rollback(self, conv: C_contra, checkpoint: Any) -> None: ...

    def expect_work(self, conv: C_contra, notice_s: float | None) -> None: ...

    async def reply(self, conv: C_contra, *, speculative: bool = False, **kwargs: Any) -> SpeculativeReply: ...
