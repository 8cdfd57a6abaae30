"""The tiny engine fails and ends like MiniCPM-o 2.6's own code, point by point (official_code_run.md §0, §4).

Each test names the real behaviour it compares with; tests/integration/test_real_code.py checks the same
points on the real code when OMNI_REAL_CODE_MODEL names a snapshot.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
from PIL import Image

from omni_server.engine.base import Engine, context_tokens
from omni_server.engine.placeholders import audio_tokens, image_tokens
from omni_server.engine.tiny import SPECIAL_TOKENS, TinyOmniModel, build_tiny_engine

SECOND = (np.random.default_rng(0).standard_normal(16_000) * 0.1).astype(np.float32)
ENCODER_ERROR = r"Given input size: \(\d+x1x1\)\. Calculated output size: \(\d+x1x0\)\. Output size is too small"


@pytest.fixture(scope="module")
def engine() -> Engine:
    return build_tiny_engine(seed=0)


def conversation(engine: Engine, session_id: str, *content: Any) -> TinyOmniModel:
    model = engine.model
    assert isinstance(model, TinyOmniModel)
    model.streaming_prefill(session_id, [model.get_sys_prompt(None, "default", "en")], engine.tokenizer)
    model.streaming_prefill(session_id, [{"role": "user", "content": list(content or [SECOND])}], engine.tokenizer)
    return model


def sizes_and_text(engine: Engine, session_id: str, **kwargs: Any) -> tuple[TinyOmniModel, list[int], str]:
    """A reply in a fresh conversation: its chunks' audio sizes (none in text mode) and its raw text."""
    model = conversation(engine, session_id)
    items = list(model.streaming_generate(session_id, engine.tokenizer, **kwargs))
    if kwargs.get("generate_audio", True):
        return model, [len(i.audio_wav) for i in items], "".join(i.text for i in items)
    return model, [], "".join(i["text"] for i in items)


def spoken_bytes(text: str) -> int:
    """Text bytes the speech side reads: the raw reply text without its special tokens."""
    return len(re.sub("|".join(map(re.escape, SPECIAL_TOKENS)), "", text).encode())


def test_audio_of_320_samples_or_fewer_fails_the_prefill_as_the_real_encoder(engine: Engine) -> None:
    """Real: 160 and 320 samples raise RuntimeError "... Output size is too small", the LLM cache untouched; 321 → 3 tokens."""
    model = conversation(engine, "short")
    for n in (1, 160, 320):
        before = context_tokens(model)
        with pytest.raises(RuntimeError, match=ENCODER_ERROR):
            model.streaming_prefill("short", [{"role": "user", "content": [SECOND[:n]]}], engine.tokenizer)
        assert context_tokens(model) == before
    before = context_tokens(model)
    model.streaming_prefill("short", [{"role": "user", "content": [SECOND[:321]]}], engine.tokenizer)
    assert context_tokens(model) - before == 3 == audio_tokens(321)


def test_token_id_0_is_the_exclamation_mark_and_is_dropped(engine: Engine) -> None:
    """Real: id 0 is "!" in the byte-level vocabulary and `_decode_text` drops it: "Wow! Great!" → "Wow Great"."""
    tokenizer, model = engine.tokenizer, engine.model
    assert isinstance(model, TinyOmniModel)
    assert tokenizer.convert_ids_to_tokens(0) == "!"
    ids = tokenizer("Wow! Great! Yes!! ok", add_special_tokens=False)["input_ids"]
    assert model._decode(ids, tokenizer) == "Wow Great Yes ok"
    texts = [sizes_and_text(engine, f"bang{i}", generate_audio=False)[2] for i in range(3)]
    assert not any("!" in t for t in texts)


def test_most_replies_end_because_the_speech_samples_its_end_first(engine: Engine) -> None:
    """Real: 9 of 11 replies ended by the TTS's audio EOS, the text cut (llm_generate_completed False), so the
    next turn's prefix is `<|tts_eos|><|im_end|>`; the others' prefix is `<|im_end|>`."""
    cut, prefixes = 0, set()
    for i in range(20):
        model, sizes, _ = sizes_and_text(engine, f"end{i}", max_new_tokens=256)
        cut += not model.llm_generate_completed
        model.streaming_prefill(f"end{i}", [{"role": "user", "content": [SECOND]}], engine.tokenizer)
        assert model.last_prompt_text is not None
        prefixes.add(model.last_prompt_text.split("\n")[0])
    assert cut > 10
    assert prefixes == {"<|tts_eos|><|im_end|>", "<|im_end|>"}


def test_speech_ending_inside_its_first_step_gives_two_chunks(engine: Engine) -> None:
    """Real: speech that ends inside its first TTS step (k < 25 codes) yields [512·k − 2048, 2048]."""
    for i in range(4):
        _, sizes, text = sizes_and_text(engine, f"first{i}", max_new_tokens=6)
        k = max(8, 3 * spoken_bytes(text))
        assert sizes == [512 * k - 2048, 2048]


def test_speech_goes_on_after_the_text_until_its_own_end(engine: Engine) -> None:
    """Real: once the LLM has ended the TTS keeps making chunks with empty text until its end (≤ 2048 codes);
    the tiny speech ends at 3 codes per spoken text byte."""
    model = conversation(engine, "after")
    items = list(model.streaming_generate("after", engine.tokenizer, max_new_tokens=60, min_new_tokens=3))
    last_text = max(i for i, item in enumerate(items) if item.text)
    assert len(items) - last_text > 2  # speech after the last text
    spoken = spoken_bytes("".join(item.text for item in items))
    assert sum(len(item.audio_wav) for item in items) == 512 * min(2048, 3 * spoken)


def test_long_replies_restart_the_speech_in_a_new_segment(engine: Engine) -> None:
    """Real: past ~120 speech-text tokens, at a sentence end, the segment ends with 512·k samples and the next
    starts 12800, 2048, 12800, … (its first step re-decodes 4 codes)."""
    boundaries = []
    for session_id in ("long4", "long10"):  # replies (seed 0) that end a sentence past 120 speech tokens
        _, sizes, _ = sizes_and_text(engine, session_id, max_new_tokens=240, min_new_tokens=3)
        assert sizes[:2] == [10_752, 2048]
        boundaries += [
            sizes[i - 1 : i + 4]
            for i in range(2, len(sizes) - 3)
            if sizes[i] < 12_800 and sizes[i + 1 : i + 4] == [12_800, 2048, 12_800]
        ]
    assert boundaries
    assert all(b[0] == 12_800 and b[1] % 512 == 0 for b in boundaries)


def test_frames_are_sliced_as_the_real_processor_slices_them(engine: Engine) -> None:
    """Real: a unit with a 640×480 frame costs 94 tokens (66 for the image), 226 with max_slice_nums ≥ 2 (an
    overview and 2 slices); 1280×720 with 9: 491 (6 slices in 2 rows); 448×448 is never sliced."""
    model = conversation(engine, "frames")
    for size, slices, unit in [((640, 480), 1, 94), ((640, 480), 2, 226), ((1280, 720), 9, 491), ((448, 448), 9, 94)]:
        before = context_tokens(model)
        frame = Image.new("RGB", size, (10, 200, 30))
        msg = [{"role": "user", "content": ["<unit>", frame, SECOND]}]
        model.streaming_prefill("frames", msg, engine.tokenizer, max_slice_nums=slices)
        assert context_tokens(model) - before == unit == 1 + image_tokens(*size, slices) + 27


def test_reply_text_may_carry_special_tokens_and_control_characters(engine: Engine) -> None:
    """Real: raw reply text holds special tokens (`</image>`, `<|spk|>`, ...) and control characters, which
    the engine's text cleaner removes before anyone sees them."""
    raw = "".join(sizes_and_text(engine, f"raw{i}", generate_audio=False)[2] for i in range(6))
    specials = re.compile("|".join(map(re.escape, SPECIAL_TOKENS)))
    control = re.compile("[\x00-\x08\x0b-\x1f\x7f]")
    assert specials.search(raw) and control.search(raw)
    clean = engine.clean_text(raw)
    assert not specials.search(clean) and not control.search(clean) and clean
