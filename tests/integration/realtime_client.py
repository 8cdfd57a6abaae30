"""A small raw WebSocket client for the realtime API, for tests that need to see every frame."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
from typing import Any

import numpy as np
import numpy.typing as npt
from websockets.asyncio.client import ClientConnection, connect

from omni_server.app import OmniServer
from tests.conftest import TOKEN, timeout


def client_ssl(server: OmniServer) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(server.cert_path))
    return context


def b64_audio(samples: npt.NDArray[np.float32]) -> str:
    return base64.b64encode(samples.astype("<f4").tobytes()).decode("ascii")


# Audio the client sends ahead of real time at most: within the server's burst (--max-input-burst-s, 10 s).
AHEAD_S = 8.0


class RawClient:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self._ahead_budget_s, self._budget_at = AHEAD_S, time.monotonic()

    @classmethod
    async def connect(
        cls, server: OmniServer, mode: str = "audio", token: str | None = TOKEN, *, user: str | None = None, **kw: Any
    ) -> RawClient:
        """`user`: a voice-library credential, sent as `X-Omni-User`."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if user:
            headers["X-Omni-User"] = user
        ws = await connect(
            f"wss://127.0.0.1:{server.port}/v1/realtime?mode={mode}&model=minicpm-o-2.6",
            ssl=client_ssl(server),
            additional_headers=headers,
            subprotocols=["map.realtime"],  # type: ignore[list-item]
            max_size=None,
            **kw,
        )
        return cls(ws)

    async def send(self, event_type: str, **fields: Any) -> None:
        await self.ws.send(json.dumps({"type": event_type, **fields}))

    async def recv(self) -> dict[str, Any]:
        event = json.loads(await asyncio.wait_for(self.ws.recv(), timeout(30)))
        self.events.append(event)
        return event

    async def until(self, event_type: str, limit_s: float = 30) -> dict[str, Any]:
        async with asyncio.timeout(timeout(limit_s)):
            while True:
                event = await self.recv()
                if event["type"] == event_type:
                    return event

    async def start(self, **payload: Any) -> dict[str, Any]:
        if not self.of_type("session.queue_done"):
            await self.until("session.queue_done")
        await self.send("session.init", payload=payload)
        return await self.until("session.created")

    async def append(self, samples: npt.NDArray[np.float32], **extra: Any) -> None:
        """Send audio, fast while within `AHEAD_S` of real time, then at real time (as the server requires)."""
        await self._pace(len(samples))
        await self.send("input.append", input={"audio": b64_audio(samples), **extra})

    async def _pace(self, n_samples: int) -> None:
        """Wait while a message of `n_samples` would run more than `AHEAD_S` ahead of real time."""
        cost_s = max(n_samples / 16000, 0.02)  # the server charges every message at least 20 ms
        self._refill()
        if cost_s > self._ahead_budget_s:
            await asyncio.sleep(cost_s - self._ahead_budget_s)  # pacing the sender, not waiting for the server
            self._refill()
        self._ahead_budget_s -= cost_s

    def _refill(self) -> None:
        now = time.monotonic()
        self._ahead_budget_s = min(AHEAD_S, self._ahead_budget_s + now - self._budget_at)
        self._budget_at = now

    async def append_binary(self, samples: npt.NDArray[np.float32], kind: int = 1) -> None:
        """Ours: a binary audio message, float32 (kind 1) or int16 (kind 2), paced as `append`."""
        await self._pace(len(samples))
        pcm = samples.astype("<f4") if kind == 1 else np.clip(np.rint(samples * 32768), -32768, 32767).astype("<i2")
        await self.ws.send(bytes([kind, 0, 0, 0]) + pcm.tobytes())

    async def speak(
        self, speech: npt.NDArray[np.float32], *, piece_s: float = 0.1, tail_s: float = 1.0, binary: int = 0
    ) -> None:
        """Send speech then silence in pieces, faster than real time within `AHEAD_S` of it (`binary`: as
        binary messages of that kind instead of input.append)."""
        audio = np.concatenate([speech, np.zeros(int(16000 * tail_s), np.float32)])
        step = int(16000 * piece_s)
        for start in range(0, len(audio), step):
            if binary:
                await self.append_binary(audio[start : start + step], binary)
            else:
                await self.append(audio[start : start + step])
            await asyncio.sleep(0.002)

    def of_type(self, event_type: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == event_type]

    async def close(self) -> None:
        await self.ws.close()
