"""Calls on MiniCPM-o 2.6's own remote code, on the CPU, when OMNI_REAL_CODE_MODEL names a snapshot.

Any snapshot works (the published one is slow on a CPU); a tiny random-weight build around the real code
runs these in about a minute. Skipped otherwise: the model's code cannot be part of this repository.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from omni_server.app import OmniServer
from omni_server.config import Settings
from omni_server.engine.base import Engine
from omni_server.engine.loader import load_engine
from tests.conftest import server_settings
from tests.integration.realtime_client import RawClient

SNAPSHOT = os.environ.get("OMNI_REAL_CODE_MODEL", "")
pytestmark = [
    pytest.mark.skipif(not SNAPSHOT, reason="set OMNI_REAL_CODE_MODEL=<a MiniCPM-o 2.6 snapshot directory>"),
    # The model's own code warns as it is compiled and run (invalid escapes, deprecated arguments): not ours.
    pytest.mark.filterwarnings("ignore::SyntaxWarning", "ignore::UserWarning", "ignore::FutureWarning"),
]


@pytest.fixture(scope="module")
def real_engine() -> Iterator[Engine]:
    with warnings.catch_warnings():  # the marks above do not cover a module fixture's setup
        warnings.simplefilter("ignore")
        engine = load_engine(Settings(model=SNAPSHOT, device="cpu", dtype="fp32"))
    yield engine


async def test_a_spoken_turn_on_the_real_code_on_cpu(
    real_engine: Engine, tmp_path: Path, question: npt.NDArray[np.float32]
) -> None:
    """`--model DIR --device cpu`: a voice turn gets 24 kHz speech from the model's own code, then a second turn."""
    assert real_engine.info.name == "minicpm-o-2.6" and real_engine.info.device == "cpu"
    settings = server_settings(tmp_path, engine="minicpmo", model=SNAPSHOT, device="cpu", max_new_tokens=24)
    async with OmniServer(settings, real_engine) as server:
        client = await RawClient.connect(server)
        created = await client.start()
        assert created["engine"]["replies_are_noise"] is False
        for _ in range(2):
            await client.speak(question)
            done = await client.until("response.done", limit_s=120)
            assert done["response"]["status"] == "completed"
        audio = client.of_type("response.output_audio.delta")
        assert audio and all(a["sample_rate"] == 24000 for a in audio)
        await client.close()


def test_the_tiny_engines_quirks_are_the_real_codes(real_engine: Engine) -> None:
    """The points tests/unit/engine/test_tiny_fidelity.py holds the tiny engine to, on the real code:
    short audio fails the same way, "!" is id 0 and dropped, audio and image token counts follow
    `placeholders`, and the text cleaner removes every token the real tokenizer added."""
    import torch
    from PIL import Image

    from omni_server.engine.base import context_tokens
    from omni_server.engine.placeholders import audio_tokens, image_tokens
    from tests.unit.engine.test_tiny_fidelity import ENCODER_ERROR

    model: Any = real_engine.model
    tok = real_engine.tokenizer
    noise = (np.random.default_rng(1).standard_normal(40_000) * 0.1).astype(np.float32)
    with real_engine.call_scope():
        model.streaming_prefill("quirks", [model.get_sys_prompt(mode="omni", language="en")], tok)
        model.streaming_prefill("quirks", [{"role": "user", "content": [noise[:16000]]}], tok)
        for n in (160, 320):
            with pytest.raises(RuntimeError, match=ENCODER_ERROR):
                model.streaming_prefill("quirks", [{"role": "user", "content": [noise[:n]]}], tok)
        for n in (321, 3200, 16000, 40000):
            before = context_tokens(model)
            model.streaming_prefill("quirks", [{"role": "user", "content": [noise[:n]]}], tok)
            assert context_tokens(model) - before == audio_tokens(n), n
        for size, slices in [((640, 480), 1), ((640, 480), 2), ((1280, 720), 9), ((448, 448), 9), ((320, 240), 6)]:
            before = context_tokens(model)
            msg = [{"role": "user", "content": ["<unit>", Image.new("RGB", size, (9, 99, 199)), noise[:16000]]}]
            model.streaming_prefill("quirks", msg, tok, max_slice_nums=slices)
            assert context_tokens(model) - before == 1 + image_tokens(*size, slices) + 27, (size, slices)
    assert tok.convert_ids_to_tokens(0) == "!"
    ids = torch.tensor([tok("Wow! Great!", add_special_tokens=False)["input_ids"]])
    assert model._decode_text(ids, tok) == ["Wow Great"]
    with pytest.raises(IndexError):
        model._decode_text(torch.tensor([[0, 0, 0]]), tok)  # a chunk of "!"s: the decoder's own bug
    for token in tok.get_added_vocab():
        if token.strip():
            assert real_engine.clean_text(f"a{token}b") == "ab", token


async def test_a_reply_the_real_decoder_fails_ends_alone(
    real_engine: Engine, tmp_path: Path, question: npt.NDArray[np.float32], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real `_decode_text` failing mid-reply (as on a chunk of "!"s) ends that reply `failed`; the model's
    state is whole, so the next turn on the real code is answered."""
    model: Any = real_engine.model
    decode, calls = model._decode_text, []

    def fails_once(result_ids: Any, tokenizer: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            return decode(result_ids[:, :0] * 0, tokenizer)  # an empty chunk: the real IndexError
        return decode(result_ids, tokenizer)

    monkeypatch.setattr(model, "_decode_text", fails_once)
    settings = server_settings(tmp_path, engine="minicpmo", model=SNAPSHOT, device="cpu", max_new_tokens=24)
    async with OmniServer(settings, real_engine) as server:
        client = await RawClient.connect(server)
        await client.start()
        statuses = []
        for _ in range(2):
            await client.speak(question)
            statuses.append((await client.until("response.done", limit_s=120))["response"]["status"])
        assert statuses == ["failed", "completed"]
        await client.close()


def test_real_replies_follow_the_chunk_pattern_the_tiny_engine_copies(real_engine: Engine) -> None:
    """Real replies: 10752, 2048, 12800, … then 512·k (or [512·k − 2048, 2048]; at a segment boundary 512·k
    then 12800, 2048, …), and an unfinished reply (the speech's end, or max tokens) leaves llm_generate_completed
    False, which is what the tiny engine's endings rest on."""
    import torch

    from tests.unit.engine.test_tiny import follows_chunk_pattern

    model: Any = real_engine.model
    tok = real_engine.tokenizer
    torch.manual_seed(0)
    noise = (np.random.default_rng(2).standard_normal(16_000) * 0.1).astype(np.float32)
    with real_engine.call_scope():
        model.streaming_prefill("chunks", [model.get_sys_prompt(mode="audio_assistant", language="en")], tok)
        for _ in range(3):
            model.streaming_prefill("chunks", [{"role": "user", "content": [noise]}], tok)
            sizes = [len(item.audio_wav) for item in model.streaming_generate("chunks", tok, max_new_tokens=30)]
            starts = [
                j for j in range(3, len(sizes) - 1) if sizes[j - 1] < 12_800 and sizes[j : j + 2] == [12_800, 2048]
            ]
            segments = [sizes[a:b] for a, b in zip([0, *starts], [*starts, len(sizes)], strict=True)]
            # a later segment's first chunk is 12800: 10752 plus its 4 re-decoded codes
            assert all(follows_chunk_pattern([10_752, *seg[1:]] if i else seg) for i, seg in enumerate(segments)), sizes
