"""The library on disk: atomic voices and characters, owners, sharing, limits, and clean refusals."""

from __future__ import annotations

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
