"""Speech fixtures made at test time with espeak-ng and sox (no audio is kept in git)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf

SENTENCES = (
    "Hello there. What is the weather like today?",
    "Tell me a short story about a small robot.",
)


def have_tools() -> bool:
    return shutil.which("espeak-ng") is not None and shutil.which("sox") is not None


def to_pcm16(raw: Path, out: Path, rate_hz: int, *effects: str) -> None:
    """sox: `raw` as `rate_hz` mono 16-bit in `out`, then `effects`. Without dither (`-D`): sox's random
    dither made each fixture differ from run to run, and Smart Turn's verdicts on it with them."""
    subprocess.run(["sox", "-D", str(raw), "-r", str(rate_hz), "-c", "1", "-b", "16", str(out), *effects], check=True)


def make_speech_wav(text: str, path: Path, *, rate_hz: int = 16000, pad_s: float = 0.5) -> Path:
    """espeak-ng speech, resampled by sox to `rate_hz` mono 16-bit, with silence on both sides."""
    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(raw), text], check=True)
    to_pcm16(raw, path, rate_hz, "pad", str(pad_s), str(pad_s))
    raw.unlink()
    return path


VOICES = {"en": "en-us", "zh": "cmn"}
# Utterances with a pause inside (parts joined by silence) whose Smart Turn verdicts on espeak-ng's voice
# are as a person would judge them: the first part sounds unfinished, the whole sounds finished.
# (Smart Turn is trained on human speech; on espeak-ng it misjudges many sentences, Chinese ones most.)
PAUSED = {
    "en": ("I would like to", "book a table for two tonight."),
    "zh": ("你能不能帮我", "就这样吧。"),
}


def make_paused_speech_wav(
    parts: tuple[str, ...], path: Path, *, language: str = "en", pause_s: float = 0.6, pad_s: float = 0.5
) -> Path:
    """`parts` spoken in `language`, each trimmed to its speech and joined by `pause_s` of silence; 16 kHz."""
    pieces = []
    for i, text in enumerate(parts):
        raw, trimmed = path.with_suffix(f".{i}.raw.wav"), path.with_suffix(f".{i}.wav")
        subprocess.run(["espeak-ng", "-v", VOICES[language], "-s", "150", "-w", str(raw), text], check=True)
        trim = ["silence", "1", "0.01", "0.5%", "reverse", "silence", "1", "0.01", "0.5%", "reverse"]
        to_pcm16(raw, trimmed, 16000, *trim)
        raw.unlink()
        pieces.append(load_f32(trimmed))
        trimmed.unlink()
    gap = np.zeros(round(pause_s * 16000), np.float32)
    pad = np.zeros(round(pad_s * 16000), np.float32)
    joined = [pad]
    for i, piece in enumerate(pieces):
        joined += [gap, piece] if i else [piece]
    sf.write(path, np.concatenate([*joined, pad]), 16000, subtype="PCM_16")
    return path


def load_f32(path: Path) -> npt.NDArray[np.float32]:
    audio, _ = sf.read(path, dtype="float32")
    return np.asarray(audio, dtype=np.float32)
