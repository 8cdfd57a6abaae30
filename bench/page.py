"""Page-level latency: the real page in Chromium, both media paths, as a person would hear it.

`python -m bench.page` (or `make bench BENCH=page`) starts the server as a separate process (tiny engine on
loopback, as bench.realtime does) once per `--engine-cost` (default: `none`, then `minicpmo-2.6`), and for
each media path (`webrtc`, `websocket`) opens the page in Debian's Chromium with a fake microphone that
loops an espeak-ng utterance and a pause long enough for the reply to play out. The page measures every
turn itself (web_client/latency.js): end of speech = its microphone going quiet; heard = what it plays
going loud; the parts add up to the total:

- *decision*: speech end → the server's `input.speech_stopped` at the page (the silence window, or the
  rule that decided: `timings.turn_rule` when the server gives it, with `speech_end_to_decision_ms`);
- *prefill*, *model*, *hold*: the server's `response.done.timings` (`prefill_tail_ms`; the rest of
  `end_of_turn_to_first_audio_ms` beside `lead_in_ms`; `lead_in_ms`, the start-up hold);
- *playout*: the rest, from the first audio leaving the server to the page hearing it (network, the
  WebRTC jitter buffer or the WebSocket player).

Gaps: silences of 20 ms or more inside a reply as the page hears it (the tiny engine's speech is noise,
so any silence is a gap), and audio the server sent after the listener would have run dry.

The section is printed and appended to bench/RESULTS.md (`--results ''` only prints), with the machine
and its load average before and after each run.

Must not import anything from `omni_server` (the server is a black box behind its page and protocol).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from bench.realtime import INPUT_RATE_HZ, SENTENCE, espeak, machine_lines, pct, server_process

MIC_RATE_HZ = 48_000
LEAD_S = 0.4  # silence before the utterance in the looped microphone file
GAP_MS = 20
PARTS = ("decision", "prefill", "model", "hold", "playout")
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


@dataclass
class Run:
    """One page call: the turns it measured and the call's own figures."""

    cost: str
    path: str
    turns: list[dict[str, Any]] = field(default_factory=list)
    first: dict[str, Any] = field(default_factory=dict)  # the call's first turn, left out (see `page_call`)
    rtc: dict[str, Any] = field(default_factory=dict)
    load: tuple[float, float] = (0.0, 0.0)  # 1-min load average before and after
    error: str = ""

    @property
    def heard(self) -> list[dict[str, Any]]:
        return [t for t in self.turns if t.get("parts") is not None and t.get("status") == "completed"]

    def totals_ms(self) -> np.ndarray[Any, np.dtype[np.float64]]:
        return np.array([t["totalMs"] for t in self.heard], dtype=np.float64)

    def part_ms(self, name: str) -> np.ndarray[Any, np.dtype[np.float64]]:
        return np.array([t["parts"][name] for t in self.heard], dtype=np.float64)

    def gaps(self) -> tuple[int, int]:
        """Turns with a silence of `GAP_MS` or more heard inside the reply, and their total ms."""
        long = [[g for g in t["gapsMs"] if g >= GAP_MS] for t in self.heard]
        return sum(1 for g in long if g), sum(sum(g) for g in long)

    def late(self) -> int:
        return sum(int(t["timings"].get("playback_underruns") or 0) for t in self.heard)

    def rules(self) -> str:
        """Which rule ended the turns, and the server's own speech end → decision p50 (when it gives them)."""
        seen = [t["timings"].get("turn_rule") for t in self.heard if t["timings"].get("turn_rule")]
        text = ", ".join(f"{r} {seen.count(r)}" for r in sorted(set(seen))) or "–"
        own = [t["timings"].get("speech_end_to_decision_ms") for t in self.heard]
        own_ms = np.array([v for v in own if isinstance(v, int | float)], dtype=np.float64)
        return f"{text} (server: {pct(own_ms, 50):.0f} ms)" if own_ms.size else text


def mic_file(workdir: Path, text: str, pause_s: float) -> Path:
    """The utterance after a short lead and before `pause_s` of silence, 48 kHz, for Chromium to loop."""
    speech = espeak(workdir, text)
    ratio = MIC_RATE_HZ // INPUT_RATE_HZ
    up = np.interp(np.arange(len(speech) * ratio) / ratio, np.arange(len(speech)), speech)
    audio = np.concatenate([np.zeros(int(LEAD_S * MIC_RATE_HZ)), up, np.zeros(int(pause_s * MIC_RATE_HZ))])
    path = workdir / "mic48k.wav"
    sf.write(path, audio, MIC_RATE_HZ, subtype="PCM_16")
    return path


async def page_call(port: int, token: str, wav: Path, path: str, turns: int, cost: str) -> Run:
    """One voice call from the page over `path` until `turns` replies have been heard (and one more began).

    The call's first turn is left out of them (kept in `Run.first`): the fake microphone loops from when
    the page asks for it, so the first utterance may begin before the call is live. (The server is warmed
    up, as `make run` starts it: cold, the first call's session opened 2-3 s late, at the tiny engine's
    first use, and that stall left WebRTC's jitter buffer deep for the next replies.)"""
    from playwright.async_api import async_playwright

    from tests.browser.conftest import CHROMIUM, FAKE_MEDIA_ARGS

    run = Run(cost, path)
    args = [*FAKE_MEDIA_ARGS, "--use-fake-ui-for-media-stream", f"--use-file-for-fake-audio-capture={wav}"]
    before = os.getloadavg()[0]
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            context = await browser.new_context(ignore_https_errors=True)
            page = await context.new_page()
            await page.goto(f"https://127.0.0.1:{port}/?token={token}")
            await page.select_option("#transport", path, force=True)
            await page.click("#voice-call")
            deadline = time.monotonic() + 60 + (turns + 1) * 30
            while time.monotonic() < deadline:
                seen = await page.evaluate("window.omni && window.omni.turns ? window.omni.turns.length : 0")
                if seen > turns + 1:
                    break
                await asyncio.sleep(1.0)
            else:
                run.error = "timed out"
            trace = await page.evaluate("window.omni")
            measured = list(trace.get("turns") or [])
            run.first, run.turns = (measured[0] if measured else {}), measured[1 : turns + 1]
            run.rtc = dict(trace.get("rtc") or {})
            if trace.get("transport") != path:
                run.error = f"the page used {trace.get('transport')} ({trace.get('fallback')})"
            await page.click("#hangup")
            await context.close()
        finally:
            await browser.close()
    run.load = (before, os.getloadavg()[0])
    return run


def table(runs: Sequence[Run]) -> list[str]:
    lines = [
        "| engine cost | path | turns heard | speech end → heard p50 / p95 ms | "
        + " | ".join(f"{p} p50" for p in PARTS)
        + " | turns with gaps ≥ 20 ms (ms) | late chunks | decided by | load before/after |",
        "|---" * (8 + len(PARTS)) + "|",
    ]
    for r in runs:
        total = r.totals_ms()
        parts = " | ".join(f"{pct(r.part_ms(p), 50):.0f}" for p in PARTS)
        gap_turns, gap_ms = r.gaps()
        lines.append(
            f"| {r.cost} | {r.path}{' (' + r.error + ')' if r.error else ''} | {len(r.heard)}/{len(r.turns)} "
            f"| {pct(total, 50):.0f} / {pct(total, 95):.0f} | {parts} | {gap_turns} ({gap_ms}) | {r.late()} "
            f"| {r.rules()} | {r.load[0]:.1f} / {r.load[1]:.1f} |"
        )
    return lines


def comparison(runs: Sequence[Run]) -> list[str]:
    """WebRTC's first audio against the WebSocket's, per engine cost (p50 of each)."""
    lines = []
    for cost in dict.fromkeys(r.cost for r in runs):
        by_path = {r.path: pct(r.totals_ms(), 50) for r in runs if r.cost == cost}
        if {"webrtc", "websocket"} <= by_path.keys():
            diff = by_path["webrtc"] - by_path["websocket"]
            lines.append(f"- {cost}: WebRTC − WebSocket, speech end → heard p50: {diff:+.0f} ms")
    for r in runs:
        if r.path == "webrtc" and r.rtc.get("jitterBufferMs") is not None:
            lines.append(
                f"- {r.cost}: the page's WebRTC jitter buffer held reply audio {r.rtc['jitterBufferMs']:.0f} ms "
                f"on average (target {r.rtc.get('jitterBufferTargetMs') or 0:.0f} ms; getStats)"
            )
    for r in runs:
        first, parts = r.first, r.first.get("parts") or {}
        if first.get("totalMs") is not None:
            split = ", ".join(f"{name} {parts[name]}" for name in PARTS if name in parts)
            rule = (first.get("timings") or {}).get("turn_rule") or "–"
            lines.append(
                f"- {r.cost}, {r.path}: the call's first turn, left out (its utterance may begin before the call is "
                f"live): {first['totalMs']} ms ({split}; {rule})"
            )
    return lines


async def bench(args: argparse.Namespace, runs: list[Run]) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="omni-bench-page-") as tmp:
        workdir = Path(tmp)
        wav = mic_file(workdir, args.text, args.pause_s)
        for cost in args.engine_cost.split(","):
            flags = ["--engine-cost", cost, "--vad-silence-ms", str(args.vad_silence_ms), "--max-sessions", "1"]
            async with server_process(workdir, flags, warm_up=True) as server:  # as `make run` starts
                for path in args.paths.split(","):
                    runs.append(await page_call(server.port, server.token, wav, path, args.turns, cost))
    return [
        f'Page calls in Chromium (fake mic looping espeak-ng "{args.text}" and {args.pause_s:.1f} s of silence; '
        'the page\'s turn-taking preset "normal": a 800 ms silence window, or Smart Turn sure at 0.5 after a '
        "200 ms pause; tiny engine, whose speech is noise, so any silence heard inside a reply is a gap). Parts add up to the total: decision = speech end → `input.speech_stopped` "
        "at the page; prefill, model, hold = the server's timings; playout = the rest (network, jitter "
        "buffer or player, speaker).",
        "",
        *table(runs),
        "",
        *comparison(runs),
    ]


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="bench.page", description=__doc__.splitlines()[0])
    p.add_argument("--turns", type=int, default=8, help="Turns measured per page call.")
    p.add_argument("--engine-cost", default="none,minicpmo-2.6", help="Server --engine-cost values, comma-separated.")
    p.add_argument("--paths", default="webrtc,websocket", help="Media paths, comma-separated.")
    p.add_argument("--vad-silence-ms", type=int, default=800, help="Passed to the server (API calls' default).")
    p.add_argument("--text", default=SENTENCE, help="What the fake microphone says (espeak-ng, English).")
    p.add_argument("--pause-s", type=float, default=5.5, help="Silence after each utterance (the reply plays).")
    p.add_argument("--quick", action="store_true", help="3 turns per call.")
    p.add_argument("--results", default=str(RESULTS), help="Append the section here ('' only prints).")
    p.add_argument("--json", default="", help="Also write every turn the pages measured to this file.")
    args = p.parse_args(argv)
    if args.quick:
        args.turns = 3
    started = datetime.datetime.now(datetime.UTC)
    runs: list[Run] = []
    lines = asyncio.run(bench(args, runs))
    if args.json:
        raw = [{"cost": r.cost, "path": r.path, "error": r.error, "rtc": r.rtc, "turns": r.turns} for r in runs]
        Path(args.json).write_text(json.dumps(raw, indent=1))
    section = [
        f"## Page latency (`python -m bench.page`), {started:%Y-%m-%d %H:%M} UTC, {args.turns} turns per call",
        "",
        *machine_lines()[:1],
        "",
        *lines,
        "",
    ]
    text = "\n".join(section) + "\n"
    sys.stdout.write(text)
    if args.results:
        with open(args.results, "a", encoding="utf-8") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
