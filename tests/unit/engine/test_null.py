"""The null engine keeps the model contract's bookkeeping with no model: what a benchmark of the server needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from omni_server.app import OmniServer
from omni_server.config import Settings
from omni_server.engine import rollback
from omni_server.engine.base import Engine, context_tokens, to_output_chunk
from omni_server.engine.loader import choose_engine
from omni_server.engine.null import SENTENCE, build_null_engine
from omni_server.engine.tiny import build_tiny_engine
from tests.conftest import server_settings
from tests.integration.realtime_client import RawClient

UNIT = np.zeros(16_000, dtype=np.float32)


def messages() -> list[dict[str, Any]]:
    """A call's first prefills: the system turn, an audio unit, a video unit, typed text."""
    frame = Image.new("RGB", (640, 480))
    return [
        {"role": "user", "content": [UNIT]},
        {"role": "user", "content": ["<unit>", frame, UNIT]},
        {"role": "user", "content": ["What is this?"]},
    ]


def prefilled(engine: Engine) -> list[int]:
    model, tokenizer = engine.model, engine.tokenizer
    model.streaming_prefill("s1", [model.get_sys_prompt(mode="omni", language="en")], tokenizer)
    lengths = [context_tokens(model)]
    for msg in messages():
        model.streaming_prefill("s1", [msg], tokenizer)
        lengths.append(context_tokens(model))
    return lengths


def test_prefills_count_the_tokens_a_model_would_add() -> None:
    assert prefilled(build_null_engine()) == prefilled(build_tiny_engine())


def test_a_reply_has_the_real_chunk_pattern_and_ends_its_turn() -> None:
    engine = build_null_engine()
    model, tokenizer = engine.model, engine.tokenizer
    before = prefilled(engine)[-1]
    chunks = [to_output_chunk(item, engine.clean_text) for item in model.streaming_generate("s1", tokenizer)]
    assert [len(c.audio) for c in chunks] == [10752, 2048, 12800, 12800, 12800]
    assert "".join(c.text for c in chunks) == SENTENCE
    assert model.llm_generate_completed and context_tokens(model) > before
    grown = context_tokens(model)
    model.streaming_prefill("s1", [{"role": "user", "content": [UNIT]}], tokenizer)  # a new turn, its tags
    assert context_tokens(model) == grown + len(tokenizer("<|im_end|>\n<|im_start|>user\n")["input_ids"]) + 27


def test_a_long_reply_speaks_its_tokens_and_text_only_replies_are_dicts() -> None:
    engine = build_null_engine()
    model, tokenizer = engine.model, engine.tokenizer
    prefilled(engine)
    audio = [len(o.audio_wav) for o in model.streaming_generate("s1", tokenizer, max_new_tokens=60, min_new_tokens=3)]
    assert sum(audio) == 8 * 12800  # 60 tokens × 3 codes = 180 codes → 8 steps of 25
    texts = list(model.streaming_generate("s1", tokenizer, max_new_tokens=6, generate_audio=False))
    assert texts == [{"text": "Sure, I can"}, {"text": " hear you. This"}]


def test_it_fails_where_the_real_model_does() -> None:
    engine = build_null_engine()
    model, tokenizer = engine.model, engine.tokenizer
    with pytest.raises(TypeError):
        model.streaming_generate("s1", tokenizer)  # before any prefill, at the call
    with pytest.raises(RuntimeError, match="Output size is too small"):
        model.streaming_prefill("s1", [{"role": "user", "content": [UNIT[:320]]}], tokenizer)


def test_rollback_restores_it_exactly() -> None:
    engine = build_null_engine()
    model, tokenizer = engine.model, engine.tokenizer
    prefilled(engine)
    saved = rollback.take(model, engine.state_attrs, context_tokens(model))
    for _ in model.streaming_generate("s1", tokenizer):
        pass
    rollback.restore(model, saved)
    assert context_tokens(model) == saved.context_tokens and not model.llm_generated


def test_it_is_chosen_by_name_only() -> None:
    assert choose_engine(Settings(engine="null", engine_faults=0.5)).engine == "null"
    assert "--engine-faults" in choose_engine(Settings(engine="null", engine_faults=0.5)).warnings[0]


async def test_a_call_through_the_server(tmp_path: Path, question: npt.NDArray[np.float32]) -> None:
    """The null engine carries a whole call: the turn ends, the reply is its sentence with its speech."""
    async with OmniServer(server_settings(tmp_path, engine="null"), build_null_engine()) as server:
        client = await RawClient.connect(server)
        try:
            await client.start()
            await client.speak(question)
            done = await client.until("response.done")
        finally:
            await client.close()
    assert done["response"]["status"] == "completed", done
    assert done["timings"]["audio_s"] == pytest.approx(4 * 12800 / 24_000, abs=0.001)
    assert "".join(e["text"] for e in client.of_type("response.output_text.delta")) == SENTENCE
