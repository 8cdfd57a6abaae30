"""The voice library on disk: prepared voices and role-play characters, each owned by one person.

Layout under the data directory (created on first write):

    voices/<id>.wav       the prepared reference (16 kHz mono 16-bit PCM, at most 30 s)
    voices/<id>.json      name, language, duration, created, owner, shared
    characters/<id>.json  name, persona, greeting, voice id, language, owner, shared

Every file is written to a temporary name and renamed into place, and a voice's metadata is written
after its audio and removed before it, so a crash or a refused write never leaves half a voice that
lists. Everything a write needs (names checked, bytes serialised) is ready before the first byte is
written; a write the disk refuses (full, over quota) removes what it had written and answers
`StorageFull`; and `sweep()` at start-up removes what a killed process left (temporaries, audio
without metadata, metadata without audio), which would otherwise count towards the total quota.

Ownership: a voice or character is visible to its owner, and to everyone when `shared`; only the
owner may change or delete it. Anything else reads as "not found" (nobody learns what others
have). The three example characters ship with the package, read-only, and use the built-in voice.

Blocking file I/O: the transport calls these methods through `asyncio.to_thread`; one lock keeps
limits and writes consistent. Must not import: torch, the engine, websockets.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import soundfile as sf

from omni_server.errors import LimitReached, NotFound, ProtocolError, StorageFull
from omni_server.media.voice_prep import PreparedVoice

logger = logging.getLogger(__name__)
SAMPLE_RATE_HZ = 16_000
EXAMPLES_PATH = Path(__file__).with_name("characters.json")
MAX_NAME_CHARS = 60
MAX_PERSONA_CHARS = 2000
MAX_GREETING_CHARS = 300
_Owned = TypeVar("_Owned", "Voice", "Character")
_VOICE_ID = re.compile(r"^v[0-9a-f]{16}$")
_CHARACTER_ID = re.compile(r"^(c[0-9a-f]{16}|example-[a-z-]+)$")
_TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")  # as `_write_atomic` names them
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@dataclass(frozen=True)
class LibraryLimits:
    max_voices_per_user: int = 20
    max_characters_per_user: int = 50
    max_total_bytes: int = 500 * 1024 * 1024


@dataclass(frozen=True)
class Voice:
    id: str
    name: str
    language: str
    duration_s: float
    speech_s: float
    created: float  # Unix time
    owner: str
    shared: bool = False

    def public(self, user: str | None) -> dict[str, Any]:
        """What a client sees: never the owner's id, only whether it is theirs."""
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k != "owner"}
        return {**fields, "mine": self.owner == user, "preview_url": f"/v1/voices/{self.id}.wav"}


@dataclass(frozen=True)
class Character:
    id: str
    name: str
    persona: str
    greeting: str = ""
    voice_id: str | None = None  # None: the model's built-in voice
    language: str = "en"
    created: float = 0.0
    owner: str | None = None  # None: a shipped example
    shared: bool = False

    def public(self, user: str | None) -> dict[str, Any]:
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k != "owner"}
        return {**fields, "mine": self.owner is not None and self.owner == user, "example": self.owner is None}


class VoiceStore:
    """Voices and characters in `root`, with per-person ownership and limits."""

    def __init__(self, root: Path, limits: LibraryLimits) -> None:
        self.root = root
        self.limits = limits
        self._lock = threading.Lock()
        self._examples = [Character(**card) for card in json.loads(EXAMPLES_PATH.read_text("utf-8"))]

    def sweep(self) -> int:
        """Remove what an interrupted save left behind; call it at start-up, before serving. Returns the count."""
        removed: list[Path] = []
        with self._lock:
            voices = self._dir("voices")
            for kind in ("voices", "characters"):
                removed += [p for p in self._dir(kind).glob(".*.tmp") if _TEMPORARY.match(p.name)]
            wavs, metas = ({p.stem: p for p in voices.glob(f"v*.{ext}")} for ext in ("wav", "json"))
            removed += [path for stem, path in wavs.items() if _VOICE_ID.match(stem) and stem not in metas]
            removed += [path for stem, path in metas.items() if _VOICE_ID.match(stem) and stem not in wavs]
            for path in removed:
                path.unlink(missing_ok=True)
        if removed:
            logger.warning("voice library: removed %d files an interrupted save left behind", len(removed))
        return len(removed)

    # ---- voices --------------------------------------------------------------------------------------

    def list_voices(self, user: str | None) -> list[Voice]:
        return [v for v in self._all_voices() if v.owner == user or v.shared]

    def voice(self, voice_id: str, user: str | None) -> Voice:
        """A voice `user` may use; `NotFound` for a missing one and for someone else's unshared one."""
        if _VOICE_ID.match(voice_id):
            found = self._read_voice(self._dir("voices") / f"{voice_id}.json")
            if found is not None and (found.owner == user or found.shared):
                return found
        raise NotFound(f"There is no voice {voice_id!r} you can use.")

    def reference(self, voice_id: str, user: str | None) -> npt.NDArray[np.float32]:
        """The prepared samples of a voice `user` may use (read once, when a call or a reading starts)."""
        self.voice(voice_id, user)
        try:
            samples, _ = sf.read(self._dir("voices") / f"{voice_id}.wav", dtype="float32")
        except (OSError, sf.LibsndfileError) as e:  # deleted between the two reads
            raise NotFound(f"There is no voice {voice_id!r} you can use.") from e
        return np.ascontiguousarray(samples, dtype=np.float32)

    def wav_path(self, voice_id: str, user: str | None) -> Path:
        self.voice(voice_id, user)
        return self._dir("voices") / f"{voice_id}.wav"

    def add_voice(self, user: str, name: str, language: str, prepared: PreparedVoice, *, shared: bool) -> Voice:
        name = _clean(name, "name", MAX_NAME_CHARS, required=True)
        _check_language(language)
        pcm = (np.clip(prepared.samples, -1.0, 1.0) * 32767).astype("<i2")
        wav = _wav_bytes(pcm)
        voice = Voice(
            id="v" + secrets.token_hex(8),
            name=name,
            language=language,
            duration_s=round(prepared.duration_s, 2),
            speech_s=round(prepared.speech_s, 2),
            created=time.time(),
            owner=user,
            shared=shared,
        )
        meta = _json_bytes(voice)
        folder = self._dir("voices")
        with self._lock:
            mine = [v for v in self._all_voices() if v.owner == user]
            if len(mine) >= self.limits.max_voices_per_user:
                raise LimitReached(f"You have {len(mine)} voices, the most allowed. Delete one before adding another.")
            if self._total_bytes() + len(wav) + len(meta) > self.limits.max_total_bytes:
                raise LimitReached("The server's voice library is full. Ask its operator to make room.")
            _write_together(folder, {f"{voice.id}.wav": wav, f"{voice.id}.json": meta})
        return voice

    def update_voice(self, user: str | None, voice_id: str, *, name: str | None, shared: bool | None) -> Voice:
        with self._lock:
            voice = self._own(self.voice(voice_id, user), user)
            if name is not None:
                voice = dataclasses.replace(voice, name=_clean(name, "name", MAX_NAME_CHARS, required=True))
            if shared is not None:
                voice = dataclasses.replace(voice, shared=shared)
            _write_together(self._dir("voices"), {f"{voice.id}.json": _json_bytes(voice)})
        return voice

    def delete_voice(self, user: str | None, voice_id: str) -> None:
        """Remove a voice; calls that already loaded it keep their copy of the samples."""
        with self._lock:
            voice = self._own(self.voice(voice_id, user), user)
            folder = self._dir("voices")
            (folder / f"{voice.id}.json").unlink(missing_ok=True)  # first: from here on it does not list
            (folder / f"{voice.id}.wav").unlink(missing_ok=True)

    # ---- characters ----------------------------------------------------------------------------------

    def list_characters(self, user: str | None) -> list[Character]:
        stored = [c for c in self._all_characters() if c.owner == user or c.shared]
        return [*self._examples, *stored]

    def character(self, character_id: str, user: str | None) -> Character:
        if _CHARACTER_ID.match(character_id):
            for example in self._examples:
                if example.id == character_id:
                    return example
            found = self._read_character(self._dir("characters") / f"{character_id}.json")
            if found is not None and (found.owner == user or found.shared):
                return found
        raise NotFound(f"There is no character {character_id!r} you can use.")

    def save_character(self, user: str, fields: dict[str, Any], character_id: str | None = None) -> Character:
        """Create a character (no id) or edit one of `user`'s own; its voice must be one `user` may use."""
        language = fields.get("language", "en")
        _check_language(language)
        voice_id = fields.get("voice_id") or None
        if voice_id is not None:
            self.voice(str(voice_id), user)
        values = {
            "name": _clean(fields.get("name"), "name", MAX_NAME_CHARS, required=True),
            "persona": _clean(fields.get("persona"), "persona", MAX_PERSONA_CHARS, required=True, multiline=True),
            "greeting": _clean(fields.get("greeting", ""), "greeting", MAX_GREETING_CHARS),
            "voice_id": voice_id,
            "language": language,
            "shared": fields.get("shared") is True,
        }
        folder = self._dir("characters")
        with self._lock:
            if character_id is None:
                mine = [c for c in self._all_characters() if c.owner == user]
                if len(mine) >= self.limits.max_characters_per_user:
                    raise LimitReached(f"You have {len(mine)} characters, the most allowed. Delete one first.")
                character = Character(id="c" + secrets.token_hex(8), created=time.time(), owner=user, **values)
            else:
                character = dataclasses.replace(self._own(self.character(character_id, user), user), **values)
            _write_together(folder, {f"{character.id}.json": _json_bytes(character)})
        return character

    def delete_character(self, user: str | None, character_id: str) -> None:
        with self._lock:
            character = self._own(self.character(character_id, user), user)
            (self._dir("characters") / f"{character.id}.json").unlink(missing_ok=True)

    # ---- internals -----------------------------------------------------------------------------------

    def _dir(self, kind: str) -> Path:
        return self.root / kind

    def _own(self, item: _Owned, user: str | None) -> _Owned:
        if item.owner is None or item.owner != user:
            what = "an example" if item.owner is None else "someone else's, shared with you"
            raise ProtocolError(f"{item.name!r} is {what}; only its owner can change it.", code="not_owner")
        return item

    def _all_voices(self) -> list[Voice]:
        found = [self._read_voice(p) for p in sorted(self._dir("voices").glob("v*.json"))]
        return sorted((v for v in found if v is not None), key=lambda v: v.created)

    def _all_characters(self) -> list[Character]:
        found = [self._read_character(p) for p in sorted(self._dir("characters").glob("c*.json"))]
        return sorted((c for c in found if c is not None), key=lambda c: c.created)

    def _total_bytes(self) -> int:
        return sum(p.stat().st_size for kind in ("voices", "characters") for p in self._dir(kind).glob("*"))

    @staticmethod
    def _read_voice(path: Path) -> Voice | None:
        data = _read_json(path)
        return None if data is None else Voice(**data)

    @staticmethod
    def _read_character(path: Path) -> Character | None:
        data = _read_json(path)
        return None if data is None else Character(**data)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return None  # deleted while listing
    return data if isinstance(data, dict) else None


def _write_together(folder: Path, files: dict[str, bytes]) -> None:
    """Write `files` in order, each atomically; if the disk refuses one, remove those written before it."""
    written: list[Path] = []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            _write_atomic(folder / name, data)
            written.append(folder / name)
    except OSError as e:
        for path in written:
            path.unlink(missing_ok=True)
        if e.errno in _DISK_FULL:
            raise StorageFull("The server's disk is full, so nothing was saved. Ask its operator to make room.") from e
        raise


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _json_bytes(item: Voice | Character) -> bytes:
    return json.dumps(dataclasses.asdict(item), ensure_ascii=False, indent=1).encode("utf-8")


def _wav_bytes(pcm: npt.NDArray[np.int16]) -> bytes:
    import io

    buf = io.BytesIO()
    sf.write(buf, pcm, SAMPLE_RATE_HZ, subtype="PCM_16", format="WAV")
    return buf.getvalue()


def _check_language(language: Any) -> None:
    if language not in ("en", "zh"):
        raise ProtocolError("language must be 'en' or 'zh'.")


def _clean(value: Any, field: str, limit: int, *, required: bool = False, multiline: bool = False) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise ProtocolError(f"{field} must be text.")
    text = value.strip()
    allowed = "\n\t" if multiline else ""
    if any(ord(ch) < 32 and ch not in allowed for ch in text):
        raise ProtocolError(f"{field} has control characters in it.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate, as a JSON "\\ud800" escape gives
        raise ProtocolError(f"{field} is not valid Unicode text.") from e
    if required and not text:
        raise ProtocolError(f"Give a {field}.")
    if len(text) > limit:
        raise ProtocolError(f"{field} is {len(text)} characters; at most {limit} are allowed.")
    return text
