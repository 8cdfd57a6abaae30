"""Turn-end benchmark: how soon a finished utterance ends the turn, and whether a pause mid-sentence does.

`python -m bench.turns` speaks espeak-ng fixtures (English and Chinese) in real time (0.1 s pieces on
an absolute schedule) into a real `CallSession` on the tiny engine, under two turn-taking setups:

- *silence 500 ms*: the turn ends after 500 ms of silence (the server before the end-of-turn model);
- *semantic*: the server's defaults: Smart Turn asked after 200 ms of silence, ending the turn when it
  is at least 0.5 sure, else an 800 ms silence window; speculation on.

Per utterance it reports the rule that ended the turn and `speech_end_to_decision_ms` (audio time from
the VAD's end of speech to the decision, the end-of-turn model's latency included), end of speech →
first reply audio leaving the server (that plus `end_of_turn_to_first_audio_ms`), and for the paused
utterances ("I would like to… [600 ms] …book a table") whether the pause was answered. Fixtures the
model misjudges on espeak's voice are kept: they are part of the measurement. `--engine-cost
minicpmo-2.6` makes the tiny engine take the real model's time, where speculation matters.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from omni_server.engine.cost import EngineCost
from omni_server.engine.tiny import build_tiny_engine
from omni_server.engine.worker import EngineWorker
from omni_server.media.smart_turn import SmartTurnModel
from omni_server.media.vad import SileroVadModel
from omni_server.protocol import ServerEvent
from omni_server.session.call_config import CallConfig
from omni_server.session.session import CallSession
from omni_server.session.turns import TurnConfig
from omni_server.session.vad_feed import VadFeed
from tests import speech

PIECE = 1600
FINISHED = {
    "en": (
        "I would like to book a table for two tonight.",
        "Can you tell me a joke?",
        "What time is it in Tokyo?",
        "Please turn off the lights in the kitchen.",
        "Thank you, that is all.",
    ),
    "zh": ("你能不能帮我就这样吧。", "好的，谢谢。", "今天天气怎么样？", "请帮我订一张桌子。", "谢谢你。"),
}
SETUPS: dict[str, dict[str, Any]] = {
    "silence 500 ms": {"turn": TurnConfig(min_silence_ms=500)},
    "semantic": {
        "turn": TurnConfig(min_silence_ms=800, pause_ms=200, speculate_pause_ms=100),
        "end_of_turn_threshold": 0.5,
        "speculate": True,
        "resume_window_s": 0.4,
    },
}


async def speak(
    worker: EngineWorker, vad: VadFeed, turn_model: SmartTurnModel, setup: dict[str, Any], audio: Any
) -> list[dict[str, Any]]:
    """One call: the utterance in real time, then 1.5 s of silence; the `response.done` timings it got."""
    done: list[dict[str, Any]] = []
    stopped = 0
    changed = asyncio.Event()

    async def send(event: ServerEvent) -> None:
        nonlocal stopped
        if event.type == "response.done":
            done.append(event.wire()["timings"])
        stopped += event.type == "input.speech_stopped"
        changed.set()

    session = CallSession("bench", worker, CallConfig(**setup), send, vad, turn_model=turn_model)
    await session.start()
    audio = np.concatenate([audio, np.zeros(24_000, np.float32)])
    async with asyncio.TaskGroup() as tg:
        tg.create_task(session.run())
        start = time.monotonic()
        for n, i in enumerate(range(0, len(audio), PIECE)):
            session.push_audio(audio[i : i + PIECE])
            await asyncio.sleep(max(0.0, start + (n + 1) * PIECE / 16_000 - time.monotonic()))
        async with asyncio.timeout(30):  # every turn the audio ended has its reply
            while not done or len(done) < stopped:
                changed.clear()
                await changed.wait()
        session.close()
    return done


def fixtures(folder: Path) -> list[tuple[str, str, bool, npt.NDArray[np.float32]]]:
    """(language, text, paused, audio) for every utterance."""
    out = []
    for language, texts in FINISHED.items():
        for n, text in enumerate(texts):
            path = speech.make_paused_speech_wav((text,), folder / f"{language}{n}.wav", language=language)
            out.append((language, text, False, speech.load_f32(path)))
        parts = speech.PAUSED[language]
        path = speech.make_paused_speech_wav(parts, folder / f"{language}-paused.wav", language=language)
        out.append((language, " … ".join(parts), True, speech.load_f32(path)))
    return out


async def bench(engine_cost: str) -> list[str]:
    worker = EngineWorker(build_tiny_engine(seed=0, cost=EngineCost.parse(engine_cost)))
    await worker.warm_up()
    vad, turn_model = VadFeed(SileroVadModel()), SmartTurnModel()
    lines = [
        f"Engine cost: {engine_cost}.",
        "",
        "| setup | utterance | rule | speech end → decision ms | → first audio ms | replies |",
        "|---|---|---|---|---|---|",
    ]
    summary: dict[str, list[float]] = {name: [] for name in SETUPS}
    first_audio: dict[str, list[float]] = {name: [] for name in SETUPS}
    answered_pauses: dict[str, int] = dict.fromkeys(SETUPS, 0)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for language, text, paused, audio in fixtures(Path(tmp)):
                for name, setup in SETUPS.items():
                    timings = await speak(worker, vad, turn_model, setup, audio)
                    first = timings[-1]
                    to_audio = first["speech_end_to_decision_ms"] + (first["end_of_turn_to_first_audio_ms"] or 0)
                    lines.append(
                        f"| {name} | {language}: {text} | {first['turn_rule']} | "
                        f"{first['speech_end_to_decision_ms']:.0f} | {to_audio:.0f} | {len(timings)} |"
                    )
                    print(lines[-1], file=sys.stderr, flush=True)
                    if paused:
                        answered_pauses[name] += len(timings) > 1
                    else:
                        summary[name].append(first["speech_end_to_decision_ms"])
                        first_audio[name].append(to_audio)
    finally:
        vad.close()
        worker.close()
    load = os.getloadavg()
    lines += ["", f"Load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (2 cores).", ""]
    lines += [
        "| setup | finished utterances: decision median / p95 ms | first audio median / p95 ms | pauses answered |",
        "|---|---|---|---|",
    ]
    for name, values in summary.items():
        heard = first_audio[name]
        lines.append(
            f"| {name} | {statistics.median(values):.0f} / {float(np.percentile(values, 95)):.0f} | "
            f"{statistics.median(heard):.0f} / {float(np.percentile(heard, 95)):.0f} | {answered_pauses[name]} of 2 |"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="bench.turns", description=__doc__.splitlines()[0])
    p.add_argument("--engine-cost", default="none", help="Tiny engine's emulated cost (none, minicpmo-2.6, k=v,...).")
    args = p.parse_args(argv)
    sys.stdout.write("\n".join(asyncio.run(bench(args.engine_cost))) + "\n")


if __name__ == "__main__":
    main()
