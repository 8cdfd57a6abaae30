"""EngineCost: named presets, parsed overrides, and the sleeps it asks for."""

from __future__ import annotations

import pytest

from omni_server.engine.cost import PRESETS, EngineCost


class Recorder:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def test_default_is_free_and_never_sleeps() -> None:
    """The default cost sleeps for nothing, whatever work is reported."""
    rec = Recorder()
    cost = EngineCost(sleep=rec)
    cost.on_prefill(1.0, 1)
    cost.on_first_chunk()
    cost.on_tts_step(0.5)
    cost.on_text_chunk()
    assert cost.is_free and rec.calls == []
    assert EngineCost.parse("none") == EngineCost()


def test_minicpmo_preset_adds_up_to_a_second_before_first_audio() -> None:
    """The minicpmo-2.6 preset puts ~1.0 s between the last prefill and the first audio chunk (one 0.533 s step)."""
    cost = EngineCost.parse("minicpmo-2.6")
    assert cost.audio_rtf == pytest.approx(0.6)
    engine_latency = cost.prefill_s_per_unit * 1.0 + cost.first_chunk_s + cost.audio_rtf * 12_800 / 24_000
    assert engine_latency == pytest.approx(1.0, abs=0.05)


def test_parse_overrides() -> None:
    """key=value pairs override "none"; after a preset name they override that preset."""
    cost = EngineCost.parse("prefill_s_per_unit=0.03,first_chunk_s=0.9,audio_rtf=0.6")
    assert (cost.prefill_s_per_unit, cost.first_chunk_s, cost.audio_rtf, cost.text_chunk_s) == (0.03, 0.9, 0.6, 0.0)
    tuned = EngineCost.parse(" minicpmo-2.6 , audio_rtf = 0.3 ")
    assert tuned.audio_rtf == 0.3 and tuned.first_chunk_s == PRESETS["minicpmo-2.6"]["first_chunk_s"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("gpt-9", "unknown engine cost preset 'gpt-9'"),
        ("speed=2", "unknown engine cost key 'speed'"),
        ("audio_rtf=fast", "not a number"),
        ("audio_rtf=-1", "must be a finite number >= 0"),
        ("audio_rtf=nan", "must be a finite number >= 0"),
        ("audio_rtf=0.5,minicpmo-2.6", "a preset name may only come first"),
    ],
)
def test_parse_rejects_with_a_clear_message(text: str, message: str) -> None:
    """Bad cost text raises ValueError saying what is wrong."""
    with pytest.raises(ValueError, match=message):
        EngineCost.parse(text)


def test_sleeps_scale_with_the_work() -> None:
    """Prefill sleeps per second of audio and per frame; TTS steps sleep rtf × the speech they decode."""
    rec = Recorder()
    cost = EngineCost.parse("prefill_s_per_unit=0.02,prefill_s_per_frame=0.05,audio_rtf=0.5,first_chunk_s=0.7", rec)
    cost.on_prefill(2.0, 1)
    cost.on_prefill(0.0, 0)
    cost.on_first_chunk()
    cost.on_tts_step(0.4)
    cost.on_text_chunk()
    cost.on_tts_step(0.4, first=True)  # a reply's first step with speech: its time to the first chunk too
    assert rec.calls == pytest.approx([0.09, 0.7, 0.2, 0.9])


def test_with_sleep_keeps_the_costs() -> None:
    """with_sleep swaps the sleep function and nothing else; equality ignores the sleep function."""
    rec = Recorder()
    cost = EngineCost.preset("minicpmo-2.6")
    swapped = cost.with_sleep(rec)
    assert swapped == cost and swapped.sleep is rec
    swapped.on_first_chunk()
    assert rec.calls == [cost.first_chunk_s]


def test_a_tts_step_counts_the_stand_ins_own_compute() -> None:
    """A step sleeps what is left of rtf × its speech after the compute since `since`; nothing when over."""
    slept: list[float] = []
    now = [10.0]
    cost = EngineCost(audio_rtf=0.6, sleep=slept.append, clock=lambda: now[0])
    cost.on_tts_step(0.5, since=9.9)  # 0.3 s of emulated compute, 0.1 s of it spent already
    now[0] = 20.0
    cost.on_tts_step(0.5, since=19.5)  # the stand-in alone took longer than the real step would
    cost.on_tts_step(0.5)  # nothing spent said: the whole step
    assert slept == pytest.approx([0.2, 0.3])
