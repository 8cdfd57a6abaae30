"""Realtime callers who arrive while the model is still loading.

The server listens before the model is loaded, so a caller may connect during loading. Such a
caller is held as if queued: `session.queued` with `reason: "starting"` every few seconds (the SDK
waits on `session.queued` already; the page shows "Starting…"), then the normal handshake once the
model is ready. If loading fails or the server stops first, the caller gets an `error` and
`session.closed` instead of a hang.

Must not import: torch, the engine, omni_server.session.
"""

from __future__ import annotations

import asyncio
import contextlib

from omni_server.protocol import Error, Send, SessionClosed, SessionQueued

UPDATE_S = 3.0


async def hold_until_loaded(send: Send, loaded: asyncio.Event, *, update_s: float = UPDATE_S) -> None:
    """Tell the caller the server is starting, every `update_s`, until `loaded` is set."""
    while not loaded.is_set():
        await send(SessionQueued(position=1, estimated_wait_s=0.0, queue_length=1, reason="starting"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(loaded.wait(), update_s)


async def refuse(send: Send, code: str, message: str) -> None:
    """End a held caller's connection when the server will not become ready."""
    await send(Error(code, message))
    await send(SessionClosed(reason=code))
