"""MiniCPM-o 2.6's system prompts (`get_sys_prompt`), text for text, for every mode and language, and the
tags its streaming prefill and generation put around turns (`GENERATE_PROMPT`, `turn_prefix`).

Owns the exact strings the real model's `get_sys_prompt` returns (shared/research/minicpmo_api.md §1.4,
checked by running it in official_code_run.md §4.2, with the *late* English `audio_assistant` text), so that
the tiny engine prefills the same system turn as the real one. The real model wraps a reference voice in
these texts; without one, `audio_assistant`/`audio_roleplay` fall back to the built-in `<reserved_53>` voice.

Pure: no torch, no model. Must not import anything from `omni_server.session` or `.transport`.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

_DEFAULT = "You are a helpful assistant. You can accept audio and text input and output voice and text."
_OMNI_ZH = "你是一个AI助手。你能接受视频，音频和文本输入并输出语音和文本。"
_OMNI_EN = "You are a helpful assistant. You can accept video, audio and text input and output voice and text. "
_CLONE_ZH = "模仿输入音频中的声音特征。"
_CLONE_EN = "Clone the voice in the provided audio prompt."
_AS_ASSISTANT_ZH = "作为助手，你将使用这种声音风格说话。"
_AS_ASSISTANT_EN = "As an assistant, you will speak using this voice style."
_ASSISTANT_PREFIX_EN = "Use the voice in the audio prompt to synthesize new content."
_ASSISTANT_SUFFIX_EN = "You are a helpful assistant with the above voice style."
_ROLEPLAY_ZH = "假装你是上述音频中的人物，与我进行对话。"
_ROLEPLAY_EN = "Try to role-play the character based on the audio prompt above."
# The real model's built-in voice when no reference audio is given.
_BUILTIN_VOICE = "Use the <reserved_53> voice."


def sys_prompt(ref_audio: np.ndarray | None = None, mode: str = "default", language: str = "zh") -> dict[str, Any]:
    """The system turn for `mode` as a `{"role": "user", "content": [...]}` message (role *user*, as the real one).

    `ref_audio` (16 kHz mono float) sits between the texts where the mode uses a voice; any `language`
    other than "zh" is English. Raises AssertionError for a `ref_audio` that is not an ndarray and
    ValueError for `voice_cloning` without one, with the real model's messages.
    """
    if ref_audio is not None:
        assert isinstance(ref_audio, np.ndarray), "ref_audio error"
    zh = language == "zh"
    if mode == "omni":
        if ref_audio is None:
            return _user([_OMNI_ZH if zh else _OMNI_EN])
        if zh:
            return _user([_OMNI_ZH + _CLONE_ZH, ref_audio, _AS_ASSISTANT_ZH])
        return _user([_OMNI_EN + _CLONE_EN, ref_audio, _AS_ASSISTANT_EN])
    if mode == "audio_assistant":
        prefix, suffix = (_CLONE_ZH, _AS_ASSISTANT_ZH) if zh else (_ASSISTANT_PREFIX_EN, _ASSISTANT_SUFFIX_EN)
    elif mode == "audio_roleplay":
        prefix, suffix = (_CLONE_ZH, _ROLEPLAY_ZH) if zh else (_CLONE_EN, _ROLEPLAY_EN)
    elif mode == "voice_cloning":
        if ref_audio is None:
            raise ValueError("ref_audio con't be None in voice_cloning mode.")
        return _user([_CLONE_ZH if zh else _CLONE_EN, ref_audio])
    else:
        return _user([_DEFAULT])
    if ref_audio is None:
        # The real model warns here too (a logger in audio_assistant, a print in audio_roleplay).
        logger.warning("no ref_audio for mode %s: using the built-in <reserved_53> voice", mode)
        return _user([_BUILTIN_VOICE, suffix])
    return _user([prefix, ref_audio, suffix])


# What `streaming_generate` appends before the reply (the real code's line 1209).
GENERATE_PROMPT = "<|im_end|>\n<|im_start|>assistant\n<|spk_bos|><|spk|><|spk_eos|><|tts_bos|>"


def turn_prefix(llm_generated: bool, llm_generate_completed: bool) -> str:
    """What the first prefill of a user turn starts with, after what came before it."""
    if not llm_generated:
        return "<|im_start|>user\n"
    if llm_generate_completed:
        return "<|im_end|>\n<|im_start|>user\n"
    return "<|tts_eos|><|im_end|>\n<|im_start|>user\n"  # the reply was cut: max tokens or abandoned


def _user(content: list[Any]) -> dict[str, Any]:
    return {"role": "user", "content": content}
