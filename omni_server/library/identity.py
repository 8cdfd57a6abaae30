"""Who is asking: a per-person id, signed by the server, on top of the one shared access token.

The access token (transport/http.py) says "may use this server"; it is shared, Jupyter-style, so it
cannot tell people apart. Voices and characters belong to a person, so the server also hands each
browser a random user id, signed with HMAC-SHA256 under a secret kept in the data directory (made on
first use, mode 0600), as the cookie `omni_user` (HttpOnly, Secure, SameSite=Strict, one year).
API clients get one from `GET /v1/user` and present it as the `X-Omni-User` header or the `user`
query parameter. A credential the server did not sign is ignored (the caller is anonymous), so
nobody can name themselves into another person's voices.

Must not import: torch, the engine, websockets.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import threading
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

USER_COOKIE = "omni_user"
USER_HEADER = "X-Omni-User"
USER_QUERY = "user"
COOKIE_MAX_AGE_S = 365 * 24 * 3600
_ID = re.compile(r"^u[0-9a-f]{24}$")


class Identity:
    """Issues and checks signed user ids; the signing secret lives in `data_dir`."""

    def __init__(self, data_dir: Path) -> None:
        self._path = data_dir / "user-secret.key"
        self._secret: bytes | None = None
        self._lock = threading.Lock()

    def issue(self) -> tuple[str, str]:
        """A new random user id and its credential (`<id>.<signature>`)."""
        user = "u" + secrets.token_hex(12)
        return user, f"{user}.{self._sign(user)}"

    def verify(self, credential: str | None) -> str | None:
        """The user id of a credential this server signed, else None."""
        if not credential:
            return None
        user, _, signature = credential.strip().partition(".")
        if not _ID.match(user) or not hmac.compare_digest(signature.encode(), self._sign(user).encode()):
            return None
        return user

    def user_of(self, path: str, headers: Iterable[tuple[str, str]]) -> str | None:
        """The verified user of a request: header, then query parameter, then cookie."""
        found: list[str] = []
        cookies: list[str] = []
        for name, value in headers:
            lowered = name.lower()
            if lowered == USER_HEADER.lower():
                found.append(value)
            elif lowered == "cookie":
                for part in value.split(";"):
                    key, _, val = part.strip().partition("=")
                    if key == USER_COOKIE:
                        cookies.append(val)
        found += parse_qs(urlsplit(path).query).get(USER_QUERY, [])
        for credential in [*found, *cookies]:
            user = self.verify(credential)
            if user is not None:
                return user
        return None

    def cookie(self, credential: str) -> str:
        return f"{USER_COOKIE}={credential}; Path=/; Max-Age={COOKIE_MAX_AGE_S}; Secure; HttpOnly; SameSite=Strict"

    def _sign(self, user: str) -> str:
        digest = hmac.new(self._key(), user.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:18]).decode("ascii")

    def _key(self) -> bytes:
        with self._lock:
            if self._secret is None:
                self._secret = _load_or_make_secret(self._path)
            return self._secret


def _load_or_make_secret(path: Path) -> bytes:
    """Read the secret, or make one atomically (two servers starting at once agree on the first)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(32))
    try:
        os.link(tmp, path)  # fails if another process made it first: then use theirs
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_bytes()
