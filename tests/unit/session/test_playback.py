"""Playback: the server's model of the listener's buffer (ahead of playback, underruns)."""

from __future__ import annotations

import pytest

from omni_server.session.playback import Playback


def test_audio_ahead_of_playback_is_sent_minus_elapsed() -> None:
    """Chunks faster than real time build a buffer; it drains with wall time; nothing before the first chunk."""
    p = Playback()
    assert p.ahead_s(5.0) == 0.0 and p.end_at is None
    p.on_audio(10.0, 0.5)
    p.on_audio(10.2, 0.5)
    assert p.ahead_s(10.2) == pytest.approx(0.8)
    assert p.ahead_s(10.7) == pytest.approx(0.3)
    assert p.ahead_s(12.0) == 0.0
    assert (p.underruns, p.min_ahead_s) == (0, pytest.approx(0.3))


def test_late_chunk_is_an_underrun_and_playback_resumes_from_it() -> None:
    """A chunk after the buffer ran dry counts the gap; the listener's clock restarts with that chunk."""
    p = Playback()
    p.on_audio(0.0, 0.5)
    p.on_audio(0.8, 0.5)  # 0.3 s of silence heard
    assert (p.underruns, p.underrun_s, p.min_ahead_s) == (1, pytest.approx(0.3), 0.0)
    assert p.end_at == pytest.approx(1.3)
    p.on_audio(1.0, 0.5)
    assert p.underruns == 1 and p.ahead_s(1.0) == pytest.approx(0.8)
