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


def make_speech_wav(text: str, path: Path, *, rate_hz: int = 16000, pad_s: float = 0.5) -> Path:
    """espeak-ng speech, resampled by sox to `rate_hz` mono 16-bit, with silence on both sides."""
    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(raw), text], check=True)
    subprocess.run(
        ["sox", str(raw), "-r", str(rate_hz), "-c", "1", "-b", "16", str(path), "pad", str(pad_s), str(pad_s)],
        check=True,
    )
    raw.unlink()
    return path


def load_f32(path: Path) -> npt.NDArray[np.float32]:
    audio, _ = sf.read(path, dtype="float32")
    return np.asarray(audio, dtype=np.float32)
