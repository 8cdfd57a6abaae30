"""`python -m omni_server.stream_file clip.mp4 --out reply.wav`: a video file through the call code.

moviepy cuts the file into 1-second units (the frame at each second's middle + that second of 16 kHz
audio); they go through the same `CallSession` a live call uses, with the turn ended at the end of
the file; the reply's text is printed as it streams and its speech written to a WAV file.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from PIL import Image

from omni_server.config import ENGINE_FIELDS, add_settings_arguments, load_settings
from omni_server.engine.loader import load_engine
from omni_server.engine.worker import EngineWorker
from omni_server.errors import EngineError
from omni_server.logs import setup_logging
from omni_server.media.vad import SileroVadModel
from omni_server.protocol import Error, OutputAudioDelta, OutputTextDelta, ResponseDone, ServerEvent
from omni_server.session.call_config import CallConfig
from omni_server.session.session import CallSession
from omni_server.session.vad_feed import VadFeed

Unit = tuple[Image.Image, npt.NDArray[np.float32]]


def read_units(path: str) -> list[Unit]:
    """One (frame, 1 s of 16 kHz mono audio) pair per second of the file; the last second is zero-padded."""
    from moviepy import VideoFileClip

    with VideoFileClip(path) as clip:
        if clip.audio is None:
            raise SystemExit(f"{path} has no audio track.")
        audio = np.asarray(clip.audio.to_soundarray(fps=16000), dtype=np.float32)
        audio = audio.mean(axis=1) if audio.ndim == 2 else audio
        units = []
        for i in range(int(np.ceil(clip.duration))):
            frame = clip.get_frame(min(i + 0.5, clip.duration - 1e-3))
            piece = np.zeros(16000, np.float32)
            chunk = audio[i * 16000 : (i + 1) * 16000]
            piece[: len(chunk)] = chunk
            units.append((Image.fromarray(frame).convert("RGB"), piece))
    return units


async def stream(
    units: list[Unit], worker: EngineWorker, *, language: str = "en", max_new_tokens: int = 256
) -> tuple[str, npt.NDArray[np.float32]]:
    text: list[str] = []
    audio: list[npt.NDArray[np.float32]] = []
    done = asyncio.Event()

    async def send(event: ServerEvent) -> None:
        if isinstance(event, OutputTextDelta):
            text.append(event.text)
            print(event.text, end="", flush=True)
        elif isinstance(event, OutputAudioDelta):
            audio.append(event.audio)
        elif isinstance(event, ResponseDone | Error):
            done.set()

    config = CallConfig(
        video=True,
        turn_detection=False,
        language=language,
        max_new_tokens=max_new_tokens,
        max_pending_audio_s=len(units) + 1.0,  # the whole file is queued at once
        input_burst_s=None,  # ... which no live caller may do
    )
    session = CallSession("file", worker, config, send, VadFeed(SileroVadModel()))  # never fed: no turn detection
    await session.start()
    async with asyncio.TaskGroup() as tg:
        run = tg.create_task(session.run())
        for frame, piece in units:
            session.push_audio(piece, frame)  # each second with its own frame
        session.commit()
        await done.wait()
        session.close("stopped")
        await run
    print()
    return "".join(text), (np.concatenate(audio) if audio else np.zeros(0, np.float32))


def build_parser() -> argparse.ArgumentParser:
    """This tool's own arguments, and the server's engine options (the same flags, `OMNI_*` and TOML keys)."""
    parser = argparse.ArgumentParser(prog="python -m omni_server.stream_file", description=__doc__.splitlines()[0])
    parser.add_argument("video", help="a video file with an audio track (mp4, mkv, webm, ...)")
    parser.add_argument("--out", default="reply.wav", help="where to write the reply's speech (24 kHz WAV)")
    parser.add_argument("--language", default="en", choices=("en", "zh"))
    add_settings_arguments(parser.add_argument_group("engine (as for the server)"), ENGINE_FIELDS)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = load_settings(argv, parser=parser)
    setup_logging(settings.log_level, json_lines=settings.log_json)
    import soundfile as sf

    units = read_units(args.video)
    try:
        engine = load_engine(settings)
    except EngineError as e:
        raise SystemExit(f"Cannot start the engine: {e.message}") from None
    print(engine.info.banner(), file=sys.stderr)
    worker = EngineWorker(engine)
    try:
        _, reply = asyncio.run(stream(units, worker, language=args.language, max_new_tokens=settings.max_new_tokens))
    finally:
        worker.close()
    sf.write(args.out, reply, 24000)
    print(f"{len(units)} units in, {len(reply) / 24000:.2f} s of speech out -> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
