"""Errors the server raises on purpose, and how each one reaches a user.

    OmniError                      base; `code` is the wire code, `message` is safe to show a user
    ├── ProtocolError              a client frame we cannot accept; the session goes on
    │   ├── InvalidAudio           bad base64, wrong size, non-finite samples       } the media layer's own
    │   ├── InvalidImage           undecodable or oversized camera frame            } refusals, wrapped once
    │   ├── InvalidVoice           audio that cannot serve as a reference voice     } by `from_media`
    │   ├── PayloadTooLarge        a message or a field over its limit
    │   ├── NotFound               no such voice or character for this person (or not theirs)
    │   └── LimitReached           a voice-library limit (count, bytes) is reached
    ├── StorageFull                the server's disk refused a write; nothing was saved
    ├── SessionRefused             no session was made (auth, queue full, shutting down)
    ├── SessionEnded               a server-side limit ended a live session (duration, idle, ...)
    └── EngineError                the model failed while serving one session; that session ends
        └── ReplyFailed            the model failed inside one reply, its state intact; only that reply ends

One function, `error_payload`, turns any exception into the `{code, message}` pair a client sees;
anything that is not an `OmniError` becomes `internal_error` with no internals in the message.
Where client media is decoded, `with from_media():` turns the media layer's refusals (`MediaError`,
whose messages are written for users) into the matching `ProtocolError`, so nothing above that line
catches a media exception.

Must not import anything of omni_server but `omni_server.media.errors` (everything imports this).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from omni_server.media.errors import MediaError


class OmniError(Exception):
    """Base class: `code` goes on the wire, `message` is written for the person using the client."""

    code = "server_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ProtocolError(OmniError):
    code = "invalid_request"


class InvalidAudio(ProtocolError):
    code = "invalid_audio"


class InvalidImage(ProtocolError):
    code = "invalid_image"


class PayloadTooLarge(ProtocolError):
    code = "payload_too_large"


class InvalidVoice(ProtocolError):
    code = "invalid_voice"


class NotFound(ProtocolError):
    code = "not_found"


class LimitReached(ProtocolError):
    code = "limit_reached"


class StorageFull(OmniError):
    code = "storage_full"


class SessionRefused(OmniError):
    code = "session_refused"


class SessionEnded(OmniError):
    """A limit ended the session; `code` doubles as the `session.closed` reason."""

    code = "session_ended"


class EngineError(OmniError):
    code = "engine_error"


class ReplyFailed(EngineError):
    """A reply failed but the conversation's model state is intact: `response.done` says `failed`, the call goes on."""

    code = "reply_failed"


def error_payload(exc: BaseException) -> dict[str, str]:
    """The `{code, message}` a client sees for `exc`; never leaks internals."""
    if isinstance(exc, OmniError):
        return {"code": exc.code, "message": exc.message}
    return {"code": "internal_error", "message": "The server hit an unexpected error; details are in its log."}


@contextlib.contextmanager
def from_media() -> Iterator[None]:
    """The boundary where client media is decoded: a `MediaError` leaves it as the protocol's error."""
    try:
        yield
    except MediaError as e:
        wrapped = {"audio": InvalidAudio, "image": InvalidImage, "voice": InvalidVoice}[e.kind]
        raise wrapped(str(e)) from e
