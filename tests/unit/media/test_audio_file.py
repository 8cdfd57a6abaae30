"""Voice files: every upload format decodes to mono 16 kHz; bad and hostile files are refused early and plainly."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys

import numpy as np
import numpy.typing as npt
import pytest
import soundfile as sf
from PIL import Image

from omni_server.media.audio_file import AudioFileError, DecodeLimits, check_content_type, decode_audio_file
from tests.audio_files import FORMATS, encode, flac_bomb

LIMITS = DecodeLimits(max_bytes=8 * 1024 * 1024, max_duration_s=120.0, max_decode_s=10.0)


@pytest.mark.parametrize("ext", sorted(FORMATS))
def test_every_upload_format_decodes_to_mono_16k(ext: str, question: npt.NDArray[np.float32]) -> None:
    """wav, mp3, m4a, ogg/opus, webm and flac all come back as 16 kHz mono float32 of the same length."""
    samples = decode_audio_file(encode(question, ext), LIMITS)
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert abs(len(samples) - len(question)) < 0.1 * 16_000
    assert 0.3 < float(np.max(np.abs(samples))) <= 1.0


def test_a_video_is_refused(question: npt.NDArray[np.float32]) -> None:
    """An mp4 with a picture track is a video, not a voice."""
    with pytest.raises(AudioFileError, match="video"):
        decode_audio_file(encode(question, "m4a", video=True), LIMITS)


def test_an_image_is_refused() -> None:
    """A PNG is named as an image."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    with pytest.raises(AudioFileError, match="image"):
        decode_audio_file(buf.getvalue(), LIMITS)


@pytest.mark.parametrize("cut", [12, 100])
def test_truncated_files_are_refused(cut: int, question: npt.NDArray[np.float32]) -> None:
    """A file cut off in its header decodes to nothing and is refused, not stored."""
    with pytest.raises(AudioFileError):
        decode_audio_file(encode(question, "m4a")[:cut], LIMITS)


def test_garbage_behind_a_valid_signature_is_refused() -> None:
    """Random bytes after an Ogg signature: 'damaged', no stack trace."""
    data = b"OggS" + np.random.default_rng(0).bytes(4000)
    with pytest.raises(AudioFileError, match="damaged|no sound|no audio"):
        decode_audio_file(data, LIMITS)


def test_unknown_formats_and_wrong_content_types_are_refused() -> None:
    """Text is not audio, whatever it claims; a declared image or text type is refused before decoding."""
    with pytest.raises(AudioFileError, match="not an audio format"):
        decode_audio_file(b"hello, this is a text file" * 10, LIMITS)
    for declared in ("image/png", "video/mp4", "text/plain"):
        with pytest.raises(AudioFileError, match="must be an audio file"):
            check_content_type(declared)
    check_content_type("audio/webm;codecs=opus")


def test_oversized_input_is_refused_before_decoding() -> None:
    """Bytes over the limit are refused without being looked at."""
    with pytest.raises(AudioFileError, match="limit"):
        decode_audio_file(b"RIFF" + bytes(100), DecodeLimits(max_bytes=50))


def test_a_two_hour_file_is_cut_off_early() -> None:
    """A 2-hour FLAC of near-silence (small on disk) is refused from its header, without decoding it whole."""
    two_hours = np.zeros(2 * 3600 * 16_000, dtype=np.int16)
    buf = io.BytesIO()
    sf.write(buf, two_hours, 16_000, format="FLAC", subtype="PCM_16")
    assert len(buf.getvalue()) < 8 * 1024 * 1024
    with pytest.raises(AudioFileError, match="longer than 120 s"):
        decode_audio_file(buf.getvalue(), LIMITS)


def test_a_container_that_lies_about_its_length_stops_at_the_limit() -> None:
    """A WAV whose header claims 0 length but whose data runs on (a 'zip bomb' of samples) stops at the limit."""
    rate, seconds = 8000, 200
    body = np.zeros(rate * seconds, dtype=np.uint8).tobytes()  # 8-bit silence: 1.6 MB expanding 8x on decode
    header = b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate, 1, 8)
    data = header + b"data" + struct.pack("<I", 0xFFFFFFFF) + body
    with pytest.raises(AudioFileError, match="longer than 120 s"):
        decode_audio_file(data, LIMITS)


def test_decoding_that_takes_too_long_is_stopped(question: npt.NDArray[np.float32]) -> None:
    """The wall-time bound is checked as decoding goes (an injected clock that jumps forward)."""
    times = iter([0.0, *([60.0] * 10_000)])
    with pytest.raises(AudioFileError, match="too long to decode"):
        decode_audio_file(encode(question, "mp3"), LIMITS, clock=lambda: next(times))


def test_a_file_that_hides_its_length_is_cut_off_while_decoding() -> None:
    """A 200-s webm with no duration in its header (as MediaRecorder writes them) stops at the limit, far before its end."""
    tone = (np.sin(np.arange(200 * 16_000) / 7) * 0.3).astype(np.float32)
    data = encode(tone, "webm", live=True)
    checks = 0

    def clock() -> float:
        nonlocal checks
        checks += 1  # once per demuxed packet (20 ms of Opus each), plus the start
        return 0.0

    with pytest.raises(AudioFileError, match="longer than 30 s"):
        decode_audio_file(data, DecodeLimits(max_duration_s=30.0), clock=clock)
    assert checks < 0.25 * 200 / 0.02, f"{checks} packets decoded of about 10000"


# Decodes a bomb in a fresh interpreter (capped at 1 GiB of address space, so a regression fails
# rather than swapping) and reports what it said and how much its peak resident memory grew.
_BOMB_CHILD = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from omni_server.media.audio_file import AudioFileError, DecodeLimits, decode_audio_file
from tests.audio_files import flac_bomb
data = flac_bomb(int(sys.argv[1]))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    decode_audio_file(data, DecodeLimits())
    said = "decoded"
except AudioFileError as e:
    said = str(e)
grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"bytes": len(data), "said": said, "grown_mib": grown_kib / 1024}))
"""


@pytest.mark.parametrize("rate_hz", [16, 1])
def test_a_flac_declaring_an_absurd_rate_is_refused_before_decoding(rate_hz: int) -> None:
    """55 bytes declaring 16 Hz (or 1 Hz) and no length: refused for its rate, peak memory grows < 32 MiB.

    Before, the one 65 535-sample block was resampled to 16 kHz first: +1.5 GB at 16 Hz, ~24 GB at 1 Hz."""
    child = subprocess.run(
        [sys.executable, "-c", _BOMB_CHILD, str(rate_hz)], capture_output=True, text=True, timeout=60, check=True
    )
    report = json.loads(child.stdout)
    assert report["bytes"] == 55
    assert f"sample rate of {rate_hz} Hz" in report["said"]
    assert report["grown_mib"] < 32


def test_a_stream_of_unknown_length_is_bounded_by_its_input_samples() -> None:
    """At an accepted 4 kHz, 16-s blocks with no declared length: refused once their input passes the limit."""
    data = flac_bomb(4_000, frames=40)  # 655 s in 562 bytes
    with pytest.raises(AudioFileError, match="longer than 30 s"):
        decode_audio_file(data, DecodeLimits(max_duration_s=30.0))


def test_a_file_with_too_many_channels_is_refused_before_decoding() -> None:
    """A 12-channel WAV is not a recording of someone speaking: refused from its header."""
    buf = io.BytesIO()
    sf.write(buf, np.zeros((1600, 12), np.float32), 16_000, format="WAV", subtype="PCM_16")
    with pytest.raises(AudioFileError, match="12 channels"):
        decode_audio_file(buf.getvalue(), LIMITS)
