"""The library on disk: atomic voices and characters, owners, sharing, limits, and clean refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from omni_server.errors import LimitReached, NotFound, ProtocolError
from omni_server.library.store import LibraryLimits, VoiceStore
from omni_server.media.voice_prep import PreparedVoice

CLIP = PreparedVoice(samples=(np.sin(np.arange(16_000 * 4) / 9) * 0.3).astype(np.float32), speech_s=3.5, source_s=6.0)


def test_a_voice_belongs_to_its_owner_until_shared(tmp_path: Path) -> None:
    """Alice's voice is invisible to Bob (not found, not 'forbidden'), usable by him once shared, never his to change."""
    store = VoiceStore(tmp_path, LibraryLimits())
    voice = store.add_voice("alice", "  Alice  ", "en", CLIP, shared=False)
    assert voice.name == "Alice" and voice.duration_s == 4.0
    assert [v.id for v in store.list_voices("alice")] == [voice.id]
    assert store.list_voices("bob") == [] and store.list_voices(None) == []
    with pytest.raises(NotFound):
        store.reference(voice.id, "bob")
    ref = store.reference(voice.id, "alice")
    assert np.max(np.abs(ref - CLIP.samples)) < 1e-3
    store.update_voice("alice", voice.id, name="Alice 2", shared=True)
    assert store.reference(voice.id, "bob").size == CLIP.samples.size
    assert store.list_voices("bob")[0].public("bob")["mine"] is False
    with pytest.raises(ProtocolError, match="only its owner"):
        store.delete_voice("bob", voice.id)
    store.delete_voice("alice", voice.id)
    assert store.list_voices("alice") == [] and sorted(p.name for p in (tmp_path / "voices").iterdir()) == []


def test_limits_refuse_without_storing_anything(tmp_path: Path) -> None:
    """Over the per-person count or the total bytes: refused, and no file is left behind."""
    store = VoiceStore(tmp_path, LibraryLimits(max_voices_per_user=1, max_total_bytes=300_000))
    store.add_voice("alice", "one", "en", CLIP, shared=False)
    with pytest.raises(LimitReached, match="most allowed"):
        store.add_voice("alice", "two", "en", CLIP, shared=False)
    store.add_voice("bob", "bob's", "en", CLIP, shared=False)
    with pytest.raises(LimitReached, match="full"):
        store.add_voice("carol", "carol's", "en", CLIP, shared=False)
    assert len(list((tmp_path / "voices").iterdir())) == 4  # two voices, two files each, no temporaries


def test_bad_names_and_ids_are_refused(tmp_path: Path) -> None:
    """Empty or control-character names, unknown languages, and path-like ids are refused plainly."""
    store = VoiceStore(tmp_path, LibraryLimits())
    for name in ("", "   ", "a\x00b", "x" * 61):
        with pytest.raises(ProtocolError):
            store.add_voice("alice", name, "en", CLIP, shared=False)
    with pytest.raises(ProtocolError, match="language"):
        store.add_voice("alice", "ok", "fr", CLIP, shared=False)
    for voice_id in ("../secret", "v" + "0" * 16, ""):
        with pytest.raises(NotFound):
            store.reference(voice_id, "alice")


def test_characters_examples_and_ownership(tmp_path: Path) -> None:
    """Three examples for everyone; own cards can be made, edited, deleted; a character's voice must be usable."""
    store = VoiceStore(tmp_path, LibraryLimits())
    examples = store.list_characters(None)
    assert len(examples) == 3 and all(c.public(None)["example"] for c in examples)
    voice = store.add_voice("alice", "v", "en", CLIP, shared=False)
    card = {"name": "Pirate", "persona": "You are a pirate.", "greeting": "Ahoy!", "voice_id": voice.id}
    with pytest.raises(NotFound):
        store.save_character("bob", card)
    made = store.save_character("alice", card)
    assert made.voice_id == voice.id and store.character(made.id, "alice").persona == "You are a pirate."
    with pytest.raises(NotFound):
        store.character(made.id, "bob")
    edited = store.save_character("alice", {**card, "persona": "You are a kind pirate."}, made.id)
    assert edited.id == made.id and edited.persona == "You are a kind pirate."
    with pytest.raises(ProtocolError, match="example"):
        store.delete_character("alice", examples[0].id)
    store.delete_character("alice", made.id)
    assert len(store.list_characters("alice")) == 3


def test_a_name_with_a_lone_surrogate_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    """JSON's "\\ud800" gives a name no file can hold: refused plainly, and no orphan .wav counts against the quota."""
    store = VoiceStore(tmp_path, LibraryLimits())
    with pytest.raises(ProtocolError, match="not valid Unicode"):
        store.add_voice("alice", "Eve\ud800", "en", CLIP, shared=False)
    with pytest.raises(ProtocolError, match="not valid Unicode"):
        store.save_character("alice", {"name": "ok", "persona": "A pirate \udfff."})
    assert not (tmp_path / "voices").exists() and not (tmp_path / "characters").exists()


# Saves a voice in a fresh interpreter whose files may not grow past 64 KiB (the kernel refuses the
# write with EFBIG, as a full disk refuses with ENOSPC), and reports the answer and what is left on disk.
_FULL_DISK_CHILD = """
import json, resource, signal, sys
from pathlib import Path
import numpy as np
from omni_server.errors import OmniError
from omni_server.library.store import LibraryLimits, VoiceStore
from omni_server.media.voice_prep import PreparedVoice
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
root = Path(sys.argv[1])
store = VoiceStore(root, LibraryLimits())
clip = PreparedVoice(samples=np.full(16_000 * 4, 0.1, np.float32), speech_s=4.0, source_s=4.0)
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
try:
    store.add_voice("alice", "big", "en", clip, shared=False)
    said = {"code": "saved"}
except OmniError as e:
    said = {"code": e.code, "message": e.message}
print(json.dumps({**said, "files": sorted(p.name for p in root.rglob("*") if p.is_file())}))
"""


def test_a_full_disk_answers_storage_full_and_leaves_nothing(tmp_path: Path) -> None:
    """A write the disk refuses: `storage_full` in plain words (not internal_error), and no orphan file."""
    child = subprocess.run(
        [sys.executable, "-c", _FULL_DISK_CHILD, str(tmp_path)], capture_output=True, text=True, timeout=60, check=True
    )
    report = json.loads(child.stdout)
    assert report["code"] == "storage_full" and "disk is full" in report["message"]
    assert report["files"] == []


def test_orphans_of_an_interrupted_save_are_swept_at_start_up(tmp_path: Path) -> None:
    """What `kill -9` mid-save leaves (a temporary, audio without metadata) is removed; whole voices stay."""
    store = VoiceStore(tmp_path, LibraryLimits())
    kept = store.add_voice("alice", "kept", "en", CLIP, shared=False)
    voices = tmp_path / "voices"
    (voices / ".v0123456789abcdef.wav.0badf00d.tmp").write_bytes(b"RIFF" + bytes(1000))
    (voices / "v0123456789abcdef.wav").write_bytes(b"RIFF" + bytes(1000))
    (voices / "vfedcba9876543210.json").write_text("{}")
    (tmp_path / "characters").mkdir()
    (tmp_path / "characters" / ".c0123456789abcdef.json.12345678.tmp").write_text("{")
    restarted = VoiceStore(tmp_path, LibraryLimits())
    assert restarted.sweep() == 4
    assert sorted(p.name for p in voices.iterdir()) == [f"{kept.id}.json", f"{kept.id}.wav"]
    assert [v.id for v in restarted.list_voices("alice")] == [kept.id]
    assert restarted.sweep() == 0
