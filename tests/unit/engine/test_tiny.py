"""The tiny engine keeps MiniCPM-o 2.6's streaming contract: prompts, caches, turns, chunks, randomness."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from omni_server.engine.base import STATE_ATTRS, Engine, context_tokens, to_output_chunk
from omni_server.engine.cost import EngineCost
from omni_server.engine.tiny import SPECIAL_TOKENS, TinyOmniModel, build_tiny_engine

GEN_PROMPT_TOKENS = 9  # <|im_end|> \n <|im_start|> assistant \n <|spk_bos|> <|spk|> <|spk_eos|> <|tts_bos|>
RNG = np.random.default_rng(0)
SECOND = (RNG.standard_normal(16_000) * 0.1).astype(np.float32)
FRAME = Image.fromarray(RNG.integers(0, 255, (480, 640, 3), dtype=np.uint8))


@pytest.fixture
def engine() -> Engine:
    return build_tiny_engine(seed=0)


def model_of(engine: Engine) -> TinyOmniModel:
    assert isinstance(engine.model, TinyOmniModel)
    return engine.model


def user(*content: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": list(content)}]


def start(engine: Engine, session_id: str = "s1", units: int = 1) -> TinyOmniModel:
    """A conversation with the default system prompt and `units` one-second audio units."""
    model = model_of(engine)
    model.streaming_prefill(session_id, [model.get_sys_prompt(None, "default", "en")], engine.tokenizer)
    for _ in range(units):
        model.streaming_prefill(session_id, user(SECOND), engine.tokenizer)
    return model


def reply(engine: Engine, **kwargs: Any) -> list[Any]:
    return list(model_of(engine).streaming_generate("ignored", engine.tokenizer, **kwargs))


def grows_by(model: TinyOmniModel, action: Any) -> int:
    before = context_tokens(model)
    action()
    return context_tokens(model) - before


# --- tokenizer and engine ------------------------------------------------------------------------------


def test_special_tokens_are_single_ids_and_text_round_trips(engine: Engine) -> None:
    """Every special token encodes as one id, and mixed UTF-8 text with specials decodes to itself."""
    tok = engine.tokenizer
    for token in SPECIAL_TOKENS:
        assert len(tok(token, add_special_tokens=False)["input_ids"]) == 1, token
    text = "<|im_start|>user\nHéllo, 世界! <unit><|tts_eos|>  done\n"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert len(tok("<|im_start|>user\n", add_special_tokens=False)["input_ids"]) == 3


def test_engine_describes_itself_and_lists_all_state(engine: Engine) -> None:
    """build_tiny_engine gives a noisy CPU engine whose per-conversation state attributes all exist."""
    info = engine.info
    assert (info.name, info.model, info.device, info.dtype) == ("tiny", "tiny-random", "cpu", "fp32")
    assert engine.info.replies_are_noise
    assert engine.state_attrs[: len(STATE_ATTRS)] == STATE_ATTRS and "sampling_rng" in engine.state_attrs
    model = start(engine)
    assert model.init_tts() is None
    model.reset_session()
    assert all(
        getattr(model, a) is None for a in engine.state_attrs if a not in ("new_user_msg",) and "llm_gen" not in a
    )
    assert (model.new_user_msg, model.llm_generated, model.llm_generate_completed) == (True, False, False)


# --- prefill: prompts and token counts --------------------------------------------------------------------


def test_first_call_is_a_closed_turn_with_the_real_text(engine: Engine) -> None:
    """The session's first message is wrapped in <|im_start|>role … <|im_end|>, its audio as a placeholder."""
    model = model_of(engine)
    ref = np.zeros(48_000, dtype=np.float32)
    model.streaming_prefill("s1", [model.get_sys_prompt(ref, "audio_assistant", "en")], engine.tokenizer)
    text = (
        "<|im_start|>user\nUse the voice in the audio prompt to synthesize new content.(<audio>./</audio>)"
        "You are a helpful assistant with the above voice style.<|im_end|>\n"
    )
    assert model.last_prompt_text == text
    words = text.replace("(<audio>./</audio>)", "")
    assert context_tokens(model) == len(engine.tokenizer(words, add_special_tokens=False)["input_ids"]) + 3 * 27


@pytest.mark.parametrize(("seconds", "tokens"), [(1.0, 27), (0.2, 7), (2.5, 68), (3.0, 81)])
def test_audio_costs_27_tokens_per_second(engine: Engine, seconds: float, tokens: int) -> None:
    """Audio becomes <|audio_start|> + 25 <unk> + <|audio_end|> per second, fewer for a part second."""
    model = start(engine, units=0)
    model.streaming_prefill("s1", user("<unit>"), engine.tokenizer)
    wav = np.zeros(int(seconds * 16_000), dtype=np.float32)
    assert grows_by(model, lambda: model.streaming_prefill("s1", user(wav), engine.tokenizer)) == tokens


def test_frame_costs_66_and_omni_unit_94_tokens(engine: Engine) -> None:
    """A frame of any size is 66 tokens; an omni unit is 94, plus a 3-token prefix when it opens a turn."""
    model = start(engine, units=0)
    unit = user("<unit>", FRAME, SECOND)
    assert grows_by(model, lambda: model.streaming_prefill("s1", unit, engine.tokenizer)) == 97
    assert model.last_prompt_text == "<|im_start|>user\n<unit>(<image>./</image>)(<audio>./</audio>)"
    assert grows_by(model, lambda: model.streaming_prefill("s1", unit, engine.tokenizer)) == 94
    assert model.last_prompt_text == "<unit>(<image>./</image>)(<audio>./</audio>)"
    tall = Image.new("RGB", (90, 1200))
    assert grows_by(model, lambda: model.streaming_prefill("s1", user(tall), engine.tokenizer)) == 66


def test_items_join_with_newlines_without_omni_input(engine: Engine) -> None:
    """omni_input=False joins content items with "\\n" instead of ""."""
    model = start(engine, units=0)
    model.streaming_prefill("s1", user("a", "b", SECOND, "c"), engine.tokenizer, omni_input=False)
    assert model.last_prompt_text == "<|im_start|>user\na\nb\n(<audio>./</audio>)\nc"


def test_turn_prefixes_follow_how_the_last_reply_ended(engine: Engine) -> None:
    """A new user turn opens plainly, after <|im_end|> if the LLM ended its reply, else after <|tts_eos|>."""
    model = start(engine)
    assert model.last_prompt_text == "<|im_start|>user\n(<audio>./</audio>)"
    model.streaming_prefill("s1", user(SECOND), engine.tokenizer)
    assert model.last_prompt_text == "(<audio>./</audio>)"
    reply(engine)
    assert model.llm_generate_completed
    model.streaming_prefill("s1", user(SECOND), engine.tokenizer)
    assert model.last_prompt_text == "<|im_end|>\n<|im_start|>user\n(<audio>./</audio>)"
    reply(engine, max_new_tokens=6)
    assert not model.llm_generate_completed
    model.streaming_prefill("s1", user(SECOND), engine.tokenizer)
    assert model.last_prompt_text == "<|tts_eos|><|im_end|>\n<|im_start|>user\n(<audio>./</audio>)"
    model.streaming_generate("s1", engine.tokenizer)  # never iterated
    model.streaming_prefill("s1", user(SECOND), engine.tokenizer)
    assert model.last_prompt_text == "<|tts_eos|><|im_end|>\n<|im_start|>user\n(<audio>./</audio>)"


def test_system_and_assistant_messages_are_appended_raw(engine: Engine) -> None:
    """After the first call, system/assistant text goes in untagged and the next user message opens a turn."""
    model = start(engine, units=2)
    assert model.audio_past_key_values is not None
    model.streaming_prefill("s1", [{"role": "assistant", "content": ["Okay."]}], engine.tokenizer)
    assert model.last_prompt_text == "Okay."
    assert model.new_user_msg and model.audio_past_key_values is None
    model.streaming_prefill("s1", [{"role": "system", "content": ["You are terse."]}], engine.tokenizer)
    assert model.last_prompt_text == "You are terse."
    model.streaming_prefill("s1", user("hi"), engine.tokenizer)
    assert model.last_prompt_text == "<|im_start|>user\nhi"


def test_prefill_validates_like_the_real_model(engine: Engine) -> None:
    """No session id, two messages or an unknown role fail an assertion; the model returns None."""
    model = model_of(engine)
    with pytest.raises(AssertionError):
        model.streaming_prefill(None, user("x"), engine.tokenizer)  # type: ignore[arg-type]
    with pytest.raises(AssertionError):
        model.streaming_prefill("s1", user("x") + user("y"), engine.tokenizer)
    with pytest.raises(AssertionError):
        model.streaming_prefill("s1", [{"role": "tool", "content": ["x"]}], engine.tokenizer)
    assert model.streaming_prefill("s1", user("x"), engine.tokenizer) is None  # type: ignore[func-returns-value]


def test_unknown_items_are_dropped_with_an_error_log(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    """A content item that is no text, image or array is logged and left out."""
    model = start(engine, units=0)
    with caplog.at_level(logging.ERROR, logger="omni_server.engine.tiny"):
        model.streaming_prefill("s1", user("a", 7, "b"), engine.tokenizer)
    assert model.last_prompt_text == "<|im_start|>user\nab"
    assert any("int" in r.getMessage() for r in caplog.records)


def test_literal_placeholder_in_text_is_refused(engine: Engine) -> None:
    """Text that spells an audio placeholder with no audio behind it raises ValueError."""
    model = start(engine, units=0)
    with pytest.raises(ValueError, match="match no input"):
        model.streaming_prefill("s1", user("say (<audio>./</audio>)"), engine.tokenizer)


# --- sessions and caches ---------------------------------------------------------------------------------


def test_new_session_id_resets_to_its_system_prompt(engine: Engine) -> None:
    """Prefilling another session id drops the old conversation: the cache holds the new system prompt only."""
    model = start(engine, "s1", units=3)
    reply(engine)
    model.streaming_prefill("s2", [model.get_sys_prompt(None, "default", "en")], engine.tokenizer)
    fresh = start(build_tiny_engine(seed=0), "s2", units=0)
    assert model.session_id == "s2"
    assert context_tokens(model) == context_tokens(fresh)
    assert model.llm_past_key_values[0][0].shape[2] == context_tokens(fresh)
    assert (model.llm_generated, model.new_user_msg) == (False, True)


def test_audio_encoder_cache_grows_per_unit_and_resets(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    """The audio cache is empty after the system prompt, grows 50 per second in a turn, resets at 1500 and on reply."""
    model = model_of(engine)
    model.streaming_prefill("s1", [model.get_sys_prompt(SECOND, "omni", "en")], engine.tokenizer)
    assert model.audio_past_key_values is None
    for n in range(1, 31):
        model.streaming_prefill("s1", user(SECOND), engine.tokenizer)
        assert model.audio_past_key_values[0][0].shape[2] == 50 * n
    with caplog.at_level(logging.WARNING, logger="omni_server.engine.tiny"):
        model.streaming_prefill("s1", user(SECOND), engine.tokenizer)
    assert model.audio_past_key_values[0][0].shape[2] == 50 and caplog.records
    model.streaming_generate("s1", engine.tokenizer)
    assert model.audio_past_key_values is None


def test_generate_before_any_prefill_raises_at_the_call(engine: Engine) -> None:
    """streaming_generate with no conversation raises TypeError when called, not when iterated."""
    with pytest.raises(TypeError):
        model_of(engine).streaming_generate("s1", engine.tokenizer)


def test_generate_is_lazy_and_ignores_session_id(engine: Engine) -> None:
    """The call only flips flags; the cache grows while iterating, by prompt + tokens − 1, in the last session."""
    model = start(engine, "s1")
    cache = model.llm_past_key_values
    gen = model.streaming_generate("not-s1", engine.tokenizer, generate_audio=False)
    assert model.llm_past_key_values is cache
    assert (model.new_user_msg, model.llm_generated, model.llm_generate_completed) == (True, True, False)
    before = context_tokens(model)
    chunks = list(gen)
    assert model.session_id == "s1" and model.llm_generate_completed
    generated = context_tokens(model) - before - GEN_PROMPT_TOKENS + 1
    assert len(chunks) == -(-generated // 3)
    assert 10 <= generated <= 60  # replies end on their own after a few tens of tokens


# --- replies ---------------------------------------------------------------------------------------------


def follows_chunk_pattern(sizes: list[int]) -> bool:
    if len(sizes) == 2 and sizes[1] == 2048:  # the reply ended inside the first TTS step
        return sizes[0] % 512 == 0 and 0 < sizes[0] <= 10_752
    middle_ok = all(s == 12_800 for s in sizes[2:-1])
    return sizes[:2] == [10_752, 2048] and middle_ok and sizes[-1] % 512 == 0 and 0 < sizes[-1] <= 12_800


def spoken_bytes(text: str) -> int:
    """Text bytes the speech side reads: the raw reply text without its special tokens."""
    return len(re.sub("|".join(map(re.escape, SPECIAL_TOKENS)), "", text).encode())


@pytest.mark.parametrize("session_id", ["a", "b", "c", "d", "e", "f"])
def test_audio_chunks_follow_the_real_size_pattern(engine: Engine, session_id: str) -> None:
    """Speech comes as 10752, 2048, 12800… then 512·k samples; when the text ended first, the speech goes on
    to 3 codes of 512 samples per text byte, with empty text after the reply's text."""
    model = start(engine, session_id)
    items = reply(engine)
    sizes = [len(r.audio_wav) for r in items]
    assert follows_chunk_pattern(sizes), sizes
    text = "".join(r.text for r in items)
    if model.llm_generate_completed:
        assert sum(sizes) == 512 * max(8, 3 * spoken_bytes(text))
        assert items[0].text and items[-1].text == ""  # text runs ahead of the audio


def test_reply_ending_inside_the_first_step(engine: Engine) -> None:
    """A reply shorter than one TTS step gives 512·k − 2048 samples, then 2048."""
    start(engine)
    assert [len(r.audio_wav) for r in reply(engine, max_new_tokens=3)] == [512 * 9 - 2048, 2048]


def test_audio_items_look_like_omni_output(engine: Engine) -> None:
    """Items carry text, a 1-D float32 CPU inference tensor at 24000 Hz, by attribute and by key."""
    start(engine)
    for item in reply(engine):
        wav = item.audio_wav
        assert isinstance(wav, torch.Tensor) and wav.dtype == torch.float32 and wav.ndim == 1
        assert wav.device.type == "cpu" and wav.is_inference() and not wav.requires_grad
        assert item["audio_wav"] is wav and item.sampling_rate == 24_000 and isinstance(item.sampling_rate, int)
        assert isinstance(item.text, str) and list(item.keys()) == ["text", "audio_wav", "sampling_rate"]
        assert 0.0 < float(wav.abs().max()) <= 0.1
        assert to_output_chunk(item, engine.clean_text).audio.shape == (len(wav),)


def test_text_mode_yields_dicts_of_three_tokens(engine: Engine) -> None:
    """generate_audio=False gives one dict per 3 tokens, the first with hidden states; max tokens round up to 3."""
    model = start(engine)
    chunks: list[dict[str, Any]] = []
    grown = grows_by(
        model, lambda: chunks.extend(reply(engine, generate_audio=False, max_new_tokens=40, min_new_tokens=3))
    )
    assert len(chunks) == 14 and grown == GEN_PROMPT_TOKENS + 42 - 1 and not model.llm_generate_completed
    assert set(chunks[0]) == {"text", "hidden_states"} and all(set(c) == {"text"} for c in chunks[1:])
    hidden = chunks[0]["hidden_states"]
    assert len(hidden) == 3 and len(hidden[0]) == 3 and hidden[0][-1].shape == (1, GEN_PROMPT_TOKENS, 64)


def test_text_mode_leaves_special_tokens_in(engine: Engine) -> None:
    """A reply that ends by itself shows <|tts_eos|> in its raw text and drops <|im_end|>."""
    start(engine)
    text = "".join(c["text"] for c in reply(engine, generate_audio=False))
    assert text.endswith("<|tts_eos|>") and "<|im_end|>" not in text


def test_incomplete_utf8_is_held_back(engine: Engine) -> None:
    """Multi-byte characters split across 3-token chunks never show as U+FFFD."""
    model = start(engine)
    texts: list[str] = []
    for _ in range(4):
        texts += [c["text"] for c in reply(engine, generate_audio=False, max_new_tokens=90, min_new_tokens=3)]
        model.streaming_prefill("s1", user(SECOND), engine.tokenizer)
    joined = "".join(texts)
    assert "\ufffd" not in joined and any(ord(ch) > 0x7F for ch in joined)


def test_same_seed_and_inputs_give_the_same_reply() -> None:
    """Two engines with one seed answer one conversation with identical text and audio."""
    replies = []
    for _ in range(2):
        engine = build_tiny_engine(seed=3)
        start(engine, "s1", units=2)
        replies.append(reply(engine))
    assert [r.text for r in replies[0]] == [r.text for r in replies[1]]
    assert all(torch.equal(a.audio_wav, b.audio_wav) for a, b in zip(*replies, strict=True))


def test_session_ids_seed_their_own_sampling(engine: Engine) -> None:
    """The same inputs under two session ids sample differently; greedy decoding does not depend on the id."""

    def text(session_id: str, **kwargs: Any) -> str:
        start(engine, session_id)
        return "".join(c["text"] for c in reply(engine, generate_audio=False, **kwargs))

    first_a, b, again_a = text("a"), text("b"), text("a")  # each start() switches session, so resets it
    assert first_a == again_a != b
    assert text("b", do_sample=False, max_new_tokens=12) == text("a", do_sample=False, max_new_tokens=12)


def test_swapped_conversations_stay_token_for_token_isolated() -> None:
    """Interleaving two conversations on one model, swapping state attrs, changes neither's output."""

    def alone(session_id: str) -> list[str]:
        engine = build_tiny_engine(seed=1)
        start(engine, session_id)
        return [r.text for r in reply(engine)]

    engine = build_tiny_engine(seed=1)
    model = model_of(engine)
    start(engine, "a")
    gen_a = model.streaming_generate("a", engine.tokenizer)
    texts_a = [next(gen_a).text]
    saved_a = {attr: getattr(model, attr) for attr in engine.state_attrs}
    start(engine, "b")
    texts_b = [r.text for r in reply(engine)]
    for attr, value in saved_a.items():
        setattr(model, attr, value)
    texts_a += [r.text for r in gen_a]
    assert texts_a == alone("a") and texts_b == alone("b")


def test_unknown_kwargs_are_ignored_and_known_ones_override(engine: Engine) -> None:
    """Only keys of the sampling config can be overridden; anything else is silently ignored."""
    start(engine)
    assert reply(engine, generate_audio=False, foo=1, num_beams=5, temperature=0.3, top_k=5)


def test_beam_search_fails_on_first_use(engine: Engine) -> None:
    """sampling=False returns a generator that raises RuntimeError when iterated, as the real code crashes."""
    start(engine)
    gen = model_of(engine).streaming_generate("s1", engine.tokenizer, sampling=False)
    with pytest.raises(RuntimeError, match="beam search"):
        next(gen)


def test_abandoned_reply_then_prefill_works_but_never_resumes(engine: Engine) -> None:
    """After a barge-in the next prefill opens with <|tts_eos|>, and the stale generator refuses to go on."""
    model = start(engine)
    stale: Iterator[Any] = model.streaming_generate("s1", engine.tokenizer)
    next(stale)
    model.streaming_prefill("s1", user(SECOND), engine.tokenizer)
    assert model.last_prompt_text.startswith("<|tts_eos|><|im_end|>\n<|im_start|>user\n")
    assert reply(engine)
    with pytest.raises(RuntimeError, match="resumed after another prefill"):
        next(stale)


# --- cost emulation --------------------------------------------------------------------------------------


class FakeTime:
    """A clock that only sleeping moves: the tiny model's compute takes no time, its emulated cost all of it."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


def test_cost_sleeps_for_prefill_first_chunk_and_audio() -> None:
    """With a cost, prefill sleeps per second and frame, the first TTS step the time to a reply's first chunk
    plus rtf × its speech, and every later step rtf × the speech it decodes: the 2048-sample second chunk
    costs a whole step, the held-back last one nothing. (The time before the first chunk once counted as
    the first step's compute and swallowed its cost: first audio came first_chunk_s after the start, not
    first_chunk_s + a step.)"""
    time = FakeTime()
    cost = EngineCost.parse("prefill_s_per_unit=0.02,prefill_s_per_frame=0.05,first_chunk_s=0.7,audio_rtf=0.5")
    engine = build_tiny_engine(seed=0, cost=cost.with_sleep(time.sleep, clock=time.clock))
    slept = time.slept
    model = model_of(engine)
    model.streaming_prefill("s1", [model.get_sys_prompt(None, "default", "en")], engine.tokenizer)
    model.streaming_prefill("s1", user("<unit>", FRAME, SECOND), engine.tokenizer)
    assert slept == pytest.approx([0.07])
    slept.clear()
    items = reply(engine)
    sizes = [len(r.audio_wav) for r in items]
    assert sizes[:3] == [10752, 2048, 12800]
    steps = [10752 + 2048, *sizes[2:-1], sizes[-1]]  # step k's speech comes out in yield k + 1
    assert slept == pytest.approx([0.7 + 0.5 * steps[0] / 24_000] + [0.5 * n / 24_000 for n in steps[1:]])
    assert len(slept) == len(items) - 1  # one sleep per step, none for the held-back remainder


def test_cost_sleeps_per_text_chunk_without_audio() -> None:
    """Text-only replies sleep first_chunk_s once and text_chunk_s per dict."""
    slept: list[float] = []
    engine = build_tiny_engine(seed=0, cost=EngineCost.parse("first_chunk_s=0.4,text_chunk_s=0.1", slept.append))
    start(engine)
    chunks = reply(engine, generate_audio=False)
    assert slept == pytest.approx([0.4] + [0.1] * len(chunks))


def failing_step(engine: Engine, session_id: str) -> tuple[int, int, int]:
    """(chunks before the fault, context before the failed chunk, context after the fault) of one reply."""
    model = start(engine, session_id)
    before, steps = context_tokens(model), 0
    gen = model.streaming_generate(session_id, engine.tokenizer, max_new_tokens=90, generate_audio=False)
    with pytest.raises(IndexError, match="index 0 is out of bounds"):
        for _ in gen:
            steps += 1
            before = context_tokens(model)
    return steps, before, context_tokens(model)


def test_fault_mode_fails_a_reply_like_the_real_decoder_and_keeps_the_cache() -> None:
    """--engine-faults: the real `_decode_text` IndexError, raised before the failed chunk's cache is kept;
    the conversation goes on with the interrupted-reply prefix, and the same seed fails at the same step."""
    engine = build_tiny_engine(seed=0, faults=0.5)
    runs = [failing_step(engine, f"s{i}") for i in range(4)]
    assert all(before == after for _, before, after in runs)  # the failed chunk added nothing
    assert any(steps > 0 for steps, _, _ in runs)  # faults come mid-reply too, not only before the first chunk
    assert runs == [failing_step(build_tiny_engine(seed=0, faults=0.5), f"s{i}") for i in range(4)]
    model = model_of(engine)
    model.streaming_prefill("s3", user(SECOND), engine.tokenizer)
    assert model.last_prompt_text is not None and model.last_prompt_text.startswith("<|tts_eos|><|im_end|>")
