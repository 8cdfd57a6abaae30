"""Untrusted WebRTC offers: bounded before anything parses them, parsed once off the event loop.

aiortc parses an offer synchronously on the event loop, and its time grows with the offer: a 6.7 MB
offer of 6,000 m-lines held the loop (and so every call and `/healthz`) for about 20 s. And it trusts
what it parses: an unknown `a=setup` value is a `KeyError` deep inside it, an empty `a=mid` an
`AttributeError`. So an offer is checked here first: its size and its number of media sections are
counted before any parsing (`check_offer_size`, cheap enough for the loop), then it is parsed in a
thread with aiortc's own parser and the few values aiortc looks up without checking are checked
(`check_offer`). Everything that fails is a `ProtocolError` with code `invalid_sdp`.

A browser's offer for a call (microphone, camera, data channel, a dozen candidates) is 3 to 10 KB
with three media sections.

Must not import: torch, the engine, omni_server.session.
"""

from __future__ import annotations

from aiortc.sdp import SessionDescription

from omni_server.errors import ProtocolError

__all__ = ["MAX_MEDIA_SECTIONS", "MAX_OFFER_CHARS", "check_offer", "check_offer_size"]

MAX_OFFER_CHARS = 64 * 1024
MAX_MEDIA_SECTIONS = 8
_KINDS = ("audio", "video", "application")


def check_offer_size(sdp: str) -> None:
    """Refuse an offer too long, or with too many media sections, for a call (no parsing: safe on the loop)."""
    if len(sdp) > MAX_OFFER_CHARS:
        raise _invalid(f"it is {len(sdp)} characters; a call's offer is at most {MAX_OFFER_CHARS}")
    sections = sdp.count("\nm=") + sdp.startswith("m=")
    if sections > MAX_MEDIA_SECTIONS:
        raise _invalid(f"it has {sections} media sections; a call's offer has at most {MAX_MEDIA_SECTIONS}")


def check_offer(sdp: str) -> None:
    """Parse a size-checked offer as aiortc will, and check what aiortc assumes (run it in a thread)."""
    check_offer_size(sdp)
    try:
        parsed = SessionDescription.parse(sdp)  # e.g. KeyError for an `a=setup` that is no DTLS role
    except Exception as e:  # aiortc's parser on untrusted text: any failure means the text is not an offer
        raise _invalid("it could not be parsed") from e
    for media in parsed.media:
        if media.kind not in _KINDS:
            raise _invalid(f"it has a media section of kind {media.kind[:20]!r}")
        if media.rtp.muxId == "":
            raise _invalid("a media section has an empty a=mid")


def _invalid(why: str) -> ProtocolError:
    return ProtocolError(f"The WebRTC offer is not valid SDP for a call: {why}.", code="invalid_sdp")
