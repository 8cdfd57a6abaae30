"""Tests for omni_server.session.units: exact model units from any chunking, and the pre-roll ring."""

from __future__ import annotations

import numpy as np
import pytest

from omni_server.session.units import PreRoll, UnitCutter, pad_tail


@pytest.mark.parametrize("seed", range(20))
def test_units_are_exact_for_random_piece_sizes(seed: int) -> None:
    """Pieces from empty to several seconds yield only exact units, and units + remainder == input."""
    rng = np.random.default_rng(seed)
    cutter = UnitCutter()
    pieces = [rng.standard_normal(int(n)).astype(np.float32) for n in rng.integers(0, 50_000, size=12)]
    pieces += [rng.standard_normal(int(n)).astype(np.float32) for n in rng.integers(0, 640, size=30)]
    units = []
    for piece in pieces:
        units += cutter.feed(piece)
        assert 0 <= cutter.pending_samples < 16_000
    total = sum(p.size for p in pieces)
    assert len(units) == total // 16_000
    assert all(u.shape == (16_000,) and u.dtype == np.float32 for u in units)
    assert cutter.pending_samples == total % 16_000
    rest = cutter.flush()
    out = np.concatenate([*units, rest if rest is not None else np.zeros(0, np.float32)])
    np.testing.assert_array_equal(out, np.concatenate(pieces))


def test_twenty_ms_frames_make_a_unit_every_fifty() -> None:
    """320-sample (20 ms) frames complete a 1-second unit on exactly every 50th frame."""
    cutter = UnitCutter()
    completed_at = [i for i in range(1, 151) if cutter.feed(np.full(320, i, dtype=np.float32))]
    assert completed_at == [50, 100, 150]


def test_one_big_piece_yields_several_units() -> None:
    """A 3.5 s piece gives three units at once and keeps half a second."""
    cutter = UnitCutter()
    units = cutter.feed(np.arange(56_000, dtype=np.float32))
    assert [u[0] for u in units] == [0.0, 16_000.0, 32_000.0]
    assert cutter.pending_samples == 8_000


def test_empty_piece_is_a_no_op() -> None:
    """Feeding nothing returns no units and changes nothing."""
    cutter = UnitCutter()
    cutter.feed(np.ones(100, dtype=np.float32))
    assert cutter.feed(np.zeros(0, dtype=np.float32)) == []
    assert cutter.pending_samples == 100


def test_flush_returns_remainder_then_none() -> None:
    """flush hands back the partial unit once and leaves the cutter empty."""
    cutter = UnitCutter(samples_per_unit=10)
    assert cutter.flush() is None
    cutter.feed(np.arange(13, dtype=np.float32))
    rest = cutter.flush()
    assert rest is not None and rest.tolist() == [10.0, 11.0, 12.0]
    assert cutter.flush() is None and cutter.pending_samples == 0
    assert cutter.feed(np.arange(10, dtype=np.float32))[0].tolist() == list(range(10))


def test_reset_drops_partial_unit() -> None:
    """reset discards pending samples without returning them."""
    cutter = UnitCutter(samples_per_unit=10)
    cutter.feed(np.ones(7, dtype=np.float32))
    cutter.reset()
    assert cutter.pending_samples == 0 and cutter.flush() is None


def test_units_do_not_alias_caller_or_cutter_buffers() -> None:
    """Returned units are independent copies of the input and of each other."""
    cutter = UnitCutter(samples_per_unit=4)
    piece = np.arange(10, dtype=np.float32)
    first, second = cutter.feed(piece)
    piece[:] = -1
    rest = cutter.flush()
    assert first.tolist() == [0, 1, 2, 3] and second.tolist() == [4, 5, 6, 7]
    assert rest is not None and rest.tolist() == [8, 9]
    cutter.feed(np.arange(2, dtype=np.float32))
    assert cutter.feed(np.arange(2, dtype=np.float32))[0].tolist() == [0, 1, 0, 1]
    assert first.tolist() == [0, 1, 2, 3]


def test_other_dtypes_are_converted_to_float32() -> None:
    """float64 or list input comes out as float32 units."""
    units = UnitCutter(samples_per_unit=3).feed([0.5, 0.25, 0.125])
    assert units[0].dtype == np.float32 and units[0].tolist() == [0.5, 0.25, 0.125]


def test_cutter_rejects_bad_arguments() -> None:
    """A non-positive unit size and multichannel input are refused."""
    with pytest.raises(ValueError, match="samples_per_unit"):
        UnitCutter(0)
    with pytest.raises(ValueError, match="1-D"):
        UnitCutter().feed(np.zeros((10, 2), dtype=np.float32))


@pytest.mark.parametrize("seed", range(10))
def test_preroll_keeps_the_most_recent_samples(seed: int) -> None:
    """After random pushes, take returns exactly the last max_samples samples pushed, oldest first."""
    rng = np.random.default_rng(seed)
    preroll = PreRoll(max_samples=8_000)
    pushed = []
    for n in rng.integers(0, 12_000, size=25):
        piece = rng.standard_normal(int(n)).astype(np.float32)
        preroll.push(piece)
        pushed.append(piece)
        assert preroll.buffered_samples == min(8_000, sum(p.size for p in pushed))
    np.testing.assert_array_equal(preroll.take(), np.concatenate(pushed)[-8_000:])


def test_preroll_take_clears() -> None:
    """take empties the buffer; a second take returns nothing."""
    preroll = PreRoll(max_samples=5)
    preroll.push(np.arange(3, dtype=np.float32))
    assert preroll.take().tolist() == [0, 1, 2]
    assert preroll.take().size == 0 and preroll.buffered_samples == 0
    preroll.push(np.arange(7, dtype=np.float32))
    assert preroll.take().tolist() == [2, 3, 4, 5, 6]


def test_preroll_wraps_around() -> None:
    """Pushes that cross the ring's end come back in order."""
    preroll = PreRoll(max_samples=5)
    for start in range(0, 12, 3):
        preroll.push(np.arange(start, start + 3, dtype=np.float32))
    assert preroll.take().tolist() == [7, 8, 9, 10, 11]


def test_preroll_clear_forgets_everything() -> None:
    """clear drops held samples."""
    preroll = PreRoll(max_samples=5)
    preroll.push(np.ones(4, dtype=np.float32))
    preroll.clear()
    assert preroll.take().size == 0


def test_zero_size_preroll_holds_nothing() -> None:
    """max_samples=0 disables the pre-roll."""
    preroll = PreRoll(max_samples=0)
    preroll.push(np.ones(100, dtype=np.float32))
    assert preroll.buffered_samples == 0 and preroll.take().shape == (0,)


def test_preroll_rejects_bad_arguments() -> None:
    """A negative size and multichannel input are refused."""
    with pytest.raises(ValueError, match="max_samples"):
        PreRoll(-1)
    with pytest.raises(ValueError, match="1-D"):
        PreRoll(10).push(np.zeros((2, 2), dtype=np.float32))


def test_short_tails_are_padded_with_silence_and_longer_ones_kept() -> None:
    """A tail of 320 samples or fewer grows to the model's minimum with zeros after it; longer tails are untouched."""
    tail = np.full(320, 0.5, np.float32)
    padded = pad_tail(tail, 321)
    assert padded.shape == (321,) and padded.dtype == np.float32
    np.testing.assert_array_equal(padded[:320], tail)
    assert padded[320] == 0.0
    longer = np.ones(400, np.float32)
    assert pad_tail(longer, 321) is longer
