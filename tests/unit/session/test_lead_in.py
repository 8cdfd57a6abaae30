"""LeadIn: the start-up hold of reply audio, learned from when chunks arrive and how long they play."""

from __future__ import annotations

import pytest

from omni_server.session.lead_in import LeadIn, needed_s
from omni_server.session.playback import Playback

STEP_S = 0.6 * 12_800 / 24_000  # MiniCPM-o 2.6's compute per TTS step at its published pace
# Its chunks (10752, 2048, 12800, 12800 samples at 24 kHz), each there one step after the one before.
REAL_PACE = [(0.0, 0.448), (STEP_S, 0.0853), (2 * STEP_S, 0.5333), (3 * STEP_S, 0.5333)]


def ended(chunks: list[tuple[float, float]], codes: int = 25) -> list[tuple[float, float]]:
    """`chunks` and the two that end a reply: the step before, out of a last TTS step of `codes` codes,
    and the held-back rest of that step at once."""
    at = chunks[-1][0] + STEP_S * codes / 25
    return [*chunks, (at, 0.5333), (at, codes * 512 / 24_000)]


def test_real_model_pattern_needs_its_second_step_minus_the_audio_before_it() -> None:
    """At the real pace the third chunk comes 0.64 s after the first, which has 0.533 s of audio before it."""
    assert needed_s(REAL_PACE) == pytest.approx(2 * STEP_S - 0.448 - 0.0853, abs=1e-3)


def test_the_need_is_exactly_enough() -> None:
    """Starting playback `needed_s` after the first chunk gives no underrun; starting sooner gives one."""
    need = needed_s(REAL_PACE)
    for delay, underruns in ((need, 0), (need - 0.02, 1)):
        p = Playback()
        p.on_audio(delay, REAL_PACE[0][1])  # the first chunk starts playing after the delay
        for at, duration_s in REAL_PACE[1:]:
            p.on_audio(max(at, delay), duration_s)
        assert p.underruns == underruns, delay


def test_replies_that_never_tested_the_pace_teach_nothing() -> None:
    """Chunks all there before the first has played (a fast engine, or a reply the model ended after two TTS
    steps at any pace) need no hold but say nothing of the next reply: they are not learned from."""
    fast = [(0.0, 0.448), (0.02, 0.085), (0.04, 0.533)]
    two_steps = [(0.0, 0.448), (0.32, 0.085), (0.32, 0.533)]  # the real pace, ended after two steps
    assert needed_s(fast) == needed_s(two_steps) == 0.0
    lead_in = LeadIn()
    for chunks in (fast, two_steps):
        assert lead_in.observe(chunks, ended=False) is None and lead_in.observe(ended(chunks)) is None
    assert not lead_in.measured
    assert lead_in.observe(ended(REAL_PACE)) == pytest.approx(0.107, abs=1e-3)
    lead_in.observe(two_steps, ended=False)
    assert lead_in.needs == (pytest.approx(0.107, abs=1e-3),)


def test_a_reply_is_judged_without_its_final_step_and_with_one_more_whole_one() -> None:
    """A reply whose speech ended at its third TTS step, after 15 codes: that step's chunk (the 12800 samples
    of the step before) comes 0.19 s after the second, and the rest at once. Counted, they said "no hold",
    and the next reply ran dry after its first chunk (CI, once the stand-in's first chunk took its real
    time). In their place a third chunk one whole step after the second teaches the real pace's need."""
    short = ended(REAL_PACE[:2], codes=15)  # as the gap test saw it
    assert needed_s(short) == 0.0 and short[-1][0] > short[0][0] + short[0][1]  # looked like a tested pace
    lead_in = LeadIn()
    assert lead_in.observe(short) == pytest.approx(0.107, abs=1e-3)
    assert lead_in.observe(ended(REAL_PACE, codes=15)) == pytest.approx(0.107, abs=1e-3)
    # Stopped by barge-in, a reply's last chunks came out of whole steps: they count, and only they.
    assert lead_in.observe(REAL_PACE[:3], ended=False) == pytest.approx(0.107, abs=1e-3)
    assert lead_in.observe(REAL_PACE[:2], ended=False) is None  # the second chunk came before the first had played


def test_hold_is_the_largest_recent_need_a_quarter_more_and_margin_capped() -> None:
    """The hold covers the worst of the last `history` replies, a quarter more and the margin, never
    beyond max_s."""
    lead_in = LeadIn(margin_s=0.04, max_s=0.35, history=2)
    assert lead_in.observe(REAL_PACE, ended=False) == pytest.approx(0.107, abs=1e-3)
    assert lead_in.hold_s() == pytest.approx(0.107 * 1.25 + 0.04, abs=1e-3)
    slower = [(at * 1.1, d) for at, d in REAL_PACE]  # the engine 10% slower: needs 0.171 s
    lead_in.observe(slower, ended=False)
    assert lead_in.hold_s() == pytest.approx(0.171 * 1.25 + 0.04, abs=2e-3)
    lead_in.observe([(0.0, 0.1), (1.0, 0.1)], ended=False)  # a stalled reply: needs 0.9 s
    assert lead_in.hold_s() == 0.35
    lead_in.observe([(0.0, 0.5), (0.4, 0.5), (0.9, 0.5)], ended=False)
    lead_in.observe([(0.0, 0.5), (0.4, 0.5), (0.9, 0.5)], ended=False)  # the stall has left the history
    assert lead_in.hold_s() == 0.0


def test_unmeasured_holds_at_most_max_and_single_chunks_teach_nothing() -> None:
    """Before a reply with two chunks was seen, the hold is max_s (the caller releases at the second chunk)."""
    lead_in = LeadIn(max_s=0.3)
    assert lead_in.observe([(0.0, 0.4)], ended=False) is None and lead_in.observe([]) is None
    assert lead_in.observe([(0.0, 0.4), (0.5, 0.1), (0.5, 0.1)]) is None  # ended: one chunk before its last step
    assert not lead_in.measured and lead_in.hold_s() == 0.3


def test_bad_settings_are_refused() -> None:
    """A margin above the cap, a negative one, or no history is a ValueError."""
    for kwargs in ({"margin_s": 0.5, "max_s": 0.3}, {"margin_s": -0.1}, {"history": 0}):
        with pytest.raises(ValueError, match="LeadIn needs"):
            LeadIn(**kwargs)  # type: ignore[arg-type]
