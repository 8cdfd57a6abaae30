"""The tiny engine's speech side: a random "TTS" that streams, ends and restarts as MiniCPM-o 2.6's does.

Owns `SpeechHead` and `speak`, which turns the LLM's 3-token chunks into `OmniOutput`s the way the
real `_generate_mel_spec_audio_streaming` does (official_code_run.md §4.4, §4.9; observed on the real
code with random weights):

- one TTS step of 25 codes (512 samples of 24 kHz each) each time 10 more text tokens exist; the first
  step keeps its last 2048 samples back for the cross-fade, every later one hands out the step before,
  so chunks are 10752, 2048, 12800, ... and the last one 512·k (k codes in the final step);
- **the speech side may sample its end first**: at each step from the third while the LLM still
  streams, with probability `SPEECH_END_P` the step ends after k codes (5 ≤ k < 25) and the reply is
  over: the LLM is abandoned mid-text, so `llm_generate_completed` stays False and the next turn gets
  the `<|tts_eos|><|im_end|>` prefix (the real code: 9 of 11 replies; here about 2 in 3). Speech that
  ends inside its first step (a text of fewer than 10 tokens) gives `[512·k − 2048, 2048]`;
- after the text has ended the speech goes on to its own end (3 codes per spoken text token, at least
  8), never past 2048 codes in a segment;
- **segments**: once a segment has more than 120 speech-text tokens and a chunk ends a sentence, the
  segment is finished (its last chunk 512·k, not cross-faded) and a new one starts, whose first step
  re-decodes the previous segment's last 4 codes: `…, 12800, 512·k`, then `12800, 2048, 12800, …`.

Made up: the probability of the speech side's end; that it never comes in the first two steps (the real
random TTS can end at any step; keeping 1.1 s or more leaves a reply long enough to be talked over);
and that `min_new_tokens` ≥ 3 (a caller asking for a long reply, as the benchmarks do) switches it off.
Must not import: sockets, websockets, aiortc, anything from `omni_server.session` or `.transport`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput

from omni_server.engine.base import OUTPUT_SAMPLE_RATE_HZ
from omni_server.engine.cost import EngineCost

HIDDEN = 64  # the tiny LLM's width: its hidden states condition the speech
TTS_TEXT_TOKENS, TTS_STEP_CODES, SAMPLES_PER_CODE, CROSSFADE = 10, 25, 512, 2048
OVERLAP_CODES = 4  # a new segment's first step re-decodes the previous segment's last 4 codes
CODES_PER_TEXT_TOKEN, MIN_CODES, MAX_CODES, NUM_CODES = 3, 8, 2048, 626
SEGMENT_TOKENS = 120  # the real code: streaming_text_reserved_len 300 − shift_len 180
SPEECH_END_P, FIRST_END_STEP, MIN_END_CODES = 0.4, 3, 5
SENTENCE_ENDS = (".", "。", "!", "?", "！", "？")


@dataclass
class OmniOutput(ModelOutput):  # type: ignore[misc]  # untyped base
    """One piece of a spoken reply, as the real model's `OmniOutput`: attributes and item access."""

    text: str | None = None
    spk_embeds: torch.Tensor | None = None
    audio_wav: torch.Tensor | None = None
    sampling_rate: int | None = None


@dataclass
class LlmChunk:
    """What one 3-token LLM step gives the reply generators."""

    text: str
    hidden_states: tuple[tuple[torch.Tensor, ...], ...] | None  # first chunk only, as the real model's
    speech_tokens: int  # text tokens before `<|tts_eos|>` (what the TTS speaks)
    last_hidden: torch.Tensor  # the newest token's last-layer state, conditions the speech head


class SpeechHead(nn.Module):
    """The TTS stand-in: an LLM hidden state → `k` audio codes (sampled) → 512 samples of 24 kHz audio per code."""

    def __init__(self) -> None:
        super().__init__()
        self.cond = nn.Linear(HIDDEN, NUM_CODES - 1)  # the last code id is the real TTS's audio EOS
        self.pos = nn.Parameter(torch.randn(TTS_STEP_CODES, NUM_CODES - 1))
        self.code_emb = nn.Embedding(NUM_CODES, 32)
        self.frame = nn.Linear(32, SAMPLES_PER_CODE)

    def codes(self, cond: torch.Tensor, k: int, rng: torch.Generator | None) -> torch.Tensor:
        probs = torch.softmax(self.cond(cond) + self.pos[:k], dim=-1)
        return torch.multinomial(probs, 1, generator=rng)[:, 0]

    def waveform(self, codes: torch.Tensor) -> torch.Tensor:
        return (torch.tanh(self.frame(self.code_emb(codes))) * 0.1).reshape(-1)


class _Segment:
    """One TTS segment's progress: its text tokens, its codes, and the audio held back for the cross-fade."""

    def __init__(self, overlap: torch.Tensor | None = None) -> None:
        self.tokens = 0
        self.codes: list[torch.Tensor] = []
        self.steps = 0
        self.held: torch.Tensor | None = None  # decoded, not yet handed out (the real code's prev_wav)
        self.overlap = overlap  # the previous segment's last codes, decoded again by the first step

    @property
    def codes_done(self) -> int:
        return sum(len(c) for c in self.codes)

    def tail_target(self) -> int:
        """Codes the segment's speech runs to once no more text comes: its own end, or 2048."""
        return min(MAX_CODES, max(MIN_CODES, CODES_PER_TEXT_TOKEN * self.tokens))


@torch.inference_mode()
def speak(
    head: SpeechHead, llm: Iterator[LlmChunk], rng: torch.Generator | None, cost: EngineCost, *, may_end_early: bool
) -> Iterator[OmniOutput]:
    """The spoken reply to the LLM's chunks, as the real streaming TTS yields it (see the module docstring)."""
    text, steps = "", 0
    cond = torch.zeros(HIDDEN)
    seg = _Segment()
    since = cost.clock()  # when the work toward the next yield began (the model's text steps count too)

    def give(wav: torch.Tensor) -> OmniOutput:
        nonlocal text
        out = OmniOutput(text=text, audio_wav=wav, sampling_rate=OUTPUT_SAMPLE_RATE_HZ)
        text = ""
        return out

    def step(k: int) -> Iterator[OmniOutput]:
        nonlocal steps, since
        codes = head.codes(cond, k, rng)
        decoded = codes if seg.overlap is None else torch.cat([seg.overlap, codes])
        wav = head.waveform(decoded)
        seg.codes.append(codes)
        seg.steps, seg.overlap = seg.steps + 1, None
        # The cost is the step's (k codes of speech), whatever part of it this yield gives out: a segment's
        # second yield gives only the 2048-sample cross-fade for a whole step's compute, as the real model's.
        # The first step also pays the model's time to its first chunk. (Slept apart, before it, that
        # time counted as compute toward the step's own and swallowed it: first audio came ~0.3 s early.)
        cost.on_tts_step(k * SAMPLES_PER_CODE / OUTPUT_SAMPLE_RATE_HZ, since=since, first=steps == 0)
        steps += 1
        if seg.held is None:  # a segment's first step keeps its last 2048 samples back for the cross-fade
            seg.held = wav[-CROSSFADE:]
            yield give(wav[:-CROSSFADE])
        else:
            previous, seg.held = seg.held, wav
            yield give(previous)
        since = cost.clock()

    def finish() -> Iterator[OmniOutput]:
        while seg.codes_done < seg.tail_target():
            yield from step(min(TTS_STEP_CODES, seg.tail_target() - seg.codes_done))
        if seg.held is not None:
            yield give(seg.held)  # the segment's last chunk, without a cross-fade

    for chunk in llm:
        text += chunk.text.split("<|tts_eos|>")[0]
        seg.tokens += chunk.speech_tokens
        cond = chunk.last_hidden
        if seg.tokens > SEGMENT_TOKENS and any(c in chunk.text for c in SENTENCE_ENDS):
            yield from finish()
            if seg.codes_done >= MAX_CODES:
                return  # the real code starts no new segment after one that ran to 2048 codes
            seg = _Segment(overlap=torch.cat(seg.codes)[-OVERLAP_CODES:])
            continue
        if seg.tokens >= (seg.steps + 1) * TTS_TEXT_TOKENS:
            may_end = may_end_early and seg.steps + 1 >= FIRST_END_STEP
            ends = may_end and float(torch.rand((), generator=rng)) < SPEECH_END_P
            k = MIN_END_CODES + int(torch.randint(TTS_STEP_CODES - MIN_END_CODES, (), generator=rng)) if ends else 0
            yield from step(k or TTS_STEP_CODES)
            if ends:  # the speech sampled its end: the text stops here too (the LLM is abandoned)
                assert seg.held is not None
                yield give(seg.held)
                return
    yield from finish()
