"""The one base of every refusal the media layer raises for client media, and which kind of media it was.

Each media module raises its own subclass (`AudioFormatError`, `ImageFormatError`, `AudioFileError`,
`VoiceRejected`), with a message safe to show the person who sent it. They are `ValueError`s, as
the standard library's codecs raise. Above the media layer they never travel far: where client media
is decoded, `omni_server.errors.from_media` turns them into the protocol's errors once.

Pure: must not import anything (it is imported by `omni_server.errors`, which everything imports).
"""

from __future__ import annotations

from typing import ClassVar, Literal

__all__ = ["MediaError"]


class MediaError(ValueError):
    """Client media that cannot be used; `kind` says which (audio samples, an image, a voice reference)."""

    kind: ClassVar[Literal["audio", "image", "voice"]] = "audio"
