"""Plain HTTP on the same port as the realtime API: the web client, health, and the access check.

websockets answers ordinary GET requests through `process_request`, so one port and one library
serve the page, `/healthz`, `/readyz` and the WebSocket upgrade. Access control works as Jupyter's:
a token is required for every connection, localhost included. A client presents it as
`Authorization: Bearer`, as a `Sec-WebSocket-Protocol` entry `omni.token.<token>` (browsers cannot
set headers), or as the `omni_token` cookie the page sets after being opened with `?token=`
(then redirected to a clean URL so the token stays out of history, logs and referrers).

Must not import: torch, the engine.
"""

from __future__ import annotations

import hmac
import http
import mimetypes
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

TOKEN_COOKIE = "omni_token"
TOKEN_SUBPROTOCOL_PREFIX = "omni.token."
_NO_STORE = [("Cache-Control", "no-store"), ("Referrer-Policy", "no-referrer")]


def presented_token(request: Request) -> str | None:
    """The token a request carries, in any of the accepted places."""
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    for header in request.headers.get_all("Sec-WebSocket-Protocol"):
        for proto in header.split(","):
            proto = proto.strip()
            if proto.startswith(TOKEN_SUBPROTOCOL_PREFIX):
                return proto[len(TOKEN_SUBPROTOCOL_PREFIX) :]
    for header in request.headers.get_all("Cookie"):
        for part in header.split(";"):
            name, _, value = part.strip().partition("=")
            if name == TOKEN_COOKIE:
                return value
    return None


def token_ok(expected: str | None, given: str | None) -> bool:
    """Constant-time comparison; no token configured means auth is off."""
    if expected is None:
        return True
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())


def respond(
    status: http.HTTPStatus, body: bytes, content_type: str, extra: tuple[tuple[str, str], ...] = ()
) -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))), *_NO_STORE, *extra])
    return Response(status.value, status.phrase, headers, body)


def text(status: http.HTTPStatus, message: str) -> Response:
    return respond(status, (message + "\n").encode(), "text/plain; charset=utf-8")


class StaticFiles:
    """Serves the web client directory; never a path outside it."""

    def __init__(self, root: str) -> None:
        self.root = Path(root).resolve()

    def get(self, path: str) -> Response:
        relative = path.lstrip("/") or "index.html"
        try:
            target = (self.root / relative).resolve()
            body = target.read_bytes() if target.is_relative_to(self.root) and target.is_file() else None
        except (ValueError, OSError):  # a NUL byte, a name longer than the filesystem allows, ...
            body = None
        if body is None:
            return text(http.HTTPStatus.NOT_FOUND, "Not found.")
        kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if kind.startswith("text/") or kind in ("application/javascript", "text/javascript"):
            kind += "; charset=utf-8"
        return respond(http.HTTPStatus.OK, body, kind)


def token_login(request: Request, expected: str | None) -> Response | None:
    """`GET /?token=...`: set the cookie and redirect to the clean URL."""
    query = parse_qs(urlsplit(request.path).query)
    given = query.get("token", [None])[0]
    if given is None:
        return None
    if not token_ok(expected, given):
        return text(http.HTTPStatus.UNAUTHORIZED, "Wrong token. Open the URL the server printed.")
    cookie = f"{TOKEN_COOKIE}={given}; Path=/; Secure; HttpOnly; SameSite=Strict"
    return respond(
        http.HTTPStatus.FOUND, b"", "text/plain", (("Location", urlsplit(request.path).path), ("Set-Cookie", cookie))
    )
