"""Clients for the voice library: HTTPS GETs and the `/v1/library` socket, as one person (or nobody)."""

from __future__ import annotations

import asyncio
import itertools
import json
import urllib.error
import urllib.request
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from omni_server.app import OmniServer
from tests.conftest import TOKEN, timeout
from tests.integration.realtime_client import client_ssl


def get(server: OmniServer, path: str, credential: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """A blocking HTTPS GET (run it in a thread); returns status, headers and body."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    if credential:
        headers["X-Omni-User"] = credential
    request = urllib.request.Request(f"https://127.0.0.1:{server.port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, context=client_ssl(server), timeout=timeout(10)) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


async def new_user(server: OmniServer) -> str:
    """A fresh credential from `GET /v1/user`."""
    status, _, body = await asyncio.to_thread(get, server, "/v1/user")
    assert status == 200
    return str(json.loads(body)["credential"])


class LibraryClient:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._ids = itertools.count(1)

    @classmethod
    async def connect(cls, server: OmniServer, credential: str | None) -> LibraryClient:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        if credential:
            headers["X-Omni-User"] = credential
        ws = await connect(
            f"wss://127.0.0.1:{server.port}/v1/library",
            ssl=client_ssl(server),
            additional_headers=headers,
            subprotocols=["omni.library"],  # type: ignore[list-item]
            max_size=None,
        )
        return cls(ws)

    async def request(self, kind: str, file: bytes | None = None, **fields: Any) -> dict[str, Any]:
        """Send one request (and its file) and return the reply with the same id."""
        rid = str(next(self._ids))
        await self.ws.send(json.dumps({"type": kind, "id": rid, **fields}))
        if file is not None:
            await self.ws.send(file)
        return await self.reply(rid)

    async def reply(self, rid: str) -> dict[str, Any]:
        async with asyncio.timeout(timeout(30)):
            while True:
                event = json.loads(await self.ws.recv())
                if event.get("id") == rid and event["type"] not in ("tts.delta", "tts.queued"):
                    return event

    async def close(self) -> None:
        await self.ws.close()
