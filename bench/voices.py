"""Voice preparation benchmark: how long a reference takes from file bytes to a stored-ready voice.

`python -m bench.voices` makes about 13 s of espeak-ng speech (with silence), encodes it in each upload
format with PyAV, and times `voice_from_file` (bounded decode, silero-vad trim and checks, loudness)
best-of-N, plus how fast hostile files are refused: a WAV whose header claims 1000 s, and a 200-s
webm that hides its length (cut off while decoding at the 120-s limit).
Runs in one process on the CPU; no server, no model.
"""

from __future__ import annotations

import argparse
import struct
import tempfile
import time
from pathlib import Path

import numpy as np

from omni_server.errors import InvalidVoice
from omni_server.library.reference import voice_from_file
from omni_server.media.audio_file import DecodeLimits
from omni_server.media.vad import SileroVadModel
from tests import speech
from tests.audio_files import FORMATS, encode


def _best_ms(fn: object, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        try:
            fn()  # type: ignore[operator]
        except InvalidVoice:
            pass
        times.append(time.perf_counter() - start)
    return min(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    vad, limits = SileroVadModel(), DecodeLimits()
    with tempfile.TemporaryDirectory() as tmp:
        sentence = speech.load_f32(speech.make_speech_wav(speech.SENTENCES[1], Path(tmp) / "s.wav"))
    clip = np.tile(sentence, 3).astype(np.float32)
    print(f"| input | bytes | voice kept | decode + prepare, best of {args.repeats} |")
    print("|---|---|---|---|")
    for ext in sorted(FORMATS):
        data = encode(clip, ext)
        kept = voice_from_file(data, "", limits, vad).duration_s
        ms = _best_ms(lambda d=data: voice_from_file(d, "", limits, vad), args.repeats)
        print(f"| {ext}, {len(clip) / 16000:.1f} s | {len(data)} | {kept:.1f} s | {ms:.0f} ms |")
    header = (
        b"RIFF\x00\x00\x00\x00WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, 8000, 8000, 1, 8) + b"data\x00\x00\x00\x00"
    )
    lying = header + bytes(8000 * 1000)
    hidden = encode((np.sin(np.arange(200 * 16000) / 7) * 0.3).astype(np.float32), "webm", live=True)
    for name, data in (("wav claiming 1000 s", lying), ("200-s webm, no duration", hidden)):
        ms = _best_ms(lambda d=data: voice_from_file(d, "", limits, vad), args.repeats)
        print(f"| refused: {name} | {len(data)} | – | {ms:.0f} ms |")


if __name__ == "__main__":
    main()
