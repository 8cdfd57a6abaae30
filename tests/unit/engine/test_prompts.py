"""The system prompts are MiniCPM-o 2.6's own, text for text."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from omni_server.engine.base import LANGUAGES, MODES
from omni_server.engine.prompts import sys_prompt

REF = np.zeros(16_000, dtype=np.float32)
R = object()  # stands for the reference audio in the expected lists

OMNI_EN = "You are a helpful assistant. You can accept video, audio and text input and output voice and text. "
OMNI_ZH = "你是一个AI助手。你能接受视频，音频和文本输入并输出语音和文本。"
DEFAULT = "You are a helpful assistant. You can accept audio and text input and output voice and text."
CLONE_EN = "Clone the voice in the provided audio prompt."
CLONE_ZH = "模仿输入音频中的声音特征。"
AS_ASSISTANT_EN = "As an assistant, you will speak using this voice style."
AS_ASSISTANT_ZH = "作为助手，你将使用这种声音风格说话。"
ASSISTANT_EN = "You are a helpful assistant with the above voice style."
ROLEPLAY_EN = "Try to role-play the character based on the audio prompt above."
ROLEPLAY_ZH = "假装你是上述音频中的人物，与我进行对话。"
BUILTIN = "Use the <reserved_53> voice."

EXPECTED: dict[tuple[str, str, bool], list[object]] = {
    ("default", "en", True): [DEFAULT],
    ("default", "en", False): [DEFAULT],
    ("default", "zh", True): [DEFAULT],
    ("default", "zh", False): [DEFAULT],
    ("omni", "en", True): [OMNI_EN + CLONE_EN, R, AS_ASSISTANT_EN],
    ("omni", "en", False): [OMNI_EN],
    ("omni", "zh", True): [OMNI_ZH + CLONE_ZH, R, AS_ASSISTANT_ZH],
    ("omni", "zh", False): [OMNI_ZH],
    ("audio_assistant", "en", True): ["Use the voice in the audio prompt to synthesize new content.", R, ASSISTANT_EN],
    ("audio_assistant", "en", False): [BUILTIN, ASSISTANT_EN],
    ("audio_assistant", "zh", True): [CLONE_ZH, R, AS_ASSISTANT_ZH],
    ("audio_assistant", "zh", False): [BUILTIN, AS_ASSISTANT_ZH],
    ("audio_roleplay", "en", True): [CLONE_EN, R, ROLEPLAY_EN],
    ("audio_roleplay", "en", False): [BUILTIN, ROLEPLAY_EN],
    ("audio_roleplay", "zh", True): [CLONE_ZH, R, ROLEPLAY_ZH],
    ("audio_roleplay", "zh", False): [BUILTIN, ROLEPLAY_ZH],
    ("voice_cloning", "en", True): [CLONE_EN, R],
    ("voice_cloning", "zh", True): [CLONE_ZH, R],
}


def _content(mode: str, language: str, with_ref: bool) -> list[object]:
    message = sys_prompt(REF if with_ref else None, mode, language)
    assert message["role"] == "user"
    return [R if item is REF else item for item in message["content"]]


@pytest.mark.parametrize(("mode", "language", "with_ref"), sorted(EXPECTED))
def test_prompt_text_matches_the_real_model(mode: str, language: str, with_ref: bool) -> None:
    """Every mode × language × reference gives the real model's content list, with the voice in its place."""
    assert _content(mode, language, with_ref) == EXPECTED[(mode, language, with_ref)]


def test_table_covers_every_mode_and_language() -> None:
    """The expectations above cover every mode and language the engine contract names."""
    assert {(m, lang) for m, lang, _ in EXPECTED} == {(m, lang) for m in MODES for lang in LANGUAGES}


@pytest.mark.parametrize("language", ["fr", "EN", ""])
def test_any_language_but_zh_is_english(language: str) -> None:
    """A language other than "zh" gets the English texts."""
    assert _content("omni", language, True) == EXPECTED[("omni", "en", True)]


def test_default_language_is_chinese() -> None:
    """Without a language the prompt is Chinese, as the real default."""
    assert sys_prompt(None, "omni")["content"] == [OMNI_ZH]


def test_omni_english_without_reference_keeps_trailing_space() -> None:
    """The English omni prompt without a voice ends in a space, as the real one."""
    assert sys_prompt(None, "omni", "en")["content"][0].endswith("text. ")


def test_voice_cloning_needs_a_reference() -> None:
    """voice_cloning without reference audio raises the real model's ValueError."""
    with pytest.raises(ValueError, match=r"^ref_audio con't be None in voice_cloning mode\.$"):
        sys_prompt(None, "voice_cloning", "en")


def test_reference_must_be_an_ndarray() -> None:
    """A reference that is not an ndarray fails the real model's assertion."""
    with pytest.raises(AssertionError, match="ref_audio error"):
        sys_prompt([0.0, 0.1], "audio_assistant", "en")  # type: ignore[arg-type]


def test_builtin_voice_fallback_warns(caplog: pytest.LogCaptureFixture) -> None:
    """Falling back to the built-in voice logs a warning instead of printing."""
    with caplog.at_level(logging.WARNING, logger="omni_server.engine.prompts"):
        sys_prompt(None, "audio_roleplay", "en")
    assert any("reserved_53" in r.getMessage() for r in caplog.records)


def test_reference_is_passed_through_unchanged() -> None:
    """The reference array in the content is the caller's own object."""
    assert sys_prompt(REF, "audio_assistant", "en")["content"][1] is REF
