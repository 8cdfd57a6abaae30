"""Untrusted audio files (wav, mp3, m4a/aac, ogg/opus, webm, flac) → mono 16 kHz float32, with hard bounds.

A voice upload is attacker-controlled bytes, so decoding is bounded before and while it runs: the
input size; the stream's declared sample rate and channel count (refused outside what a recording
can have, before anything is decoded); the duration, counted in *input* samples at each frame's own
rate before that frame is resampled (a 55-byte FLAC declaring 16 Hz holds 4096 s in one frame that
would resample to 65 M samples, so output is never where the bound is checked first); the resampler's
output per frame; and the wall time.
The container format is chosen here from the file's first bytes and handed to PyAV explicitly, so
ffmpeg never probes its way into a demuxer we did not list (playlists, image sequences, ...).

Decoding is synchronous and CPU-bound: callers run it in a thread. Pure PyAV/numpy on bytes in memory:
must not import torch, sockets, asyncio, or anything from `omni_server` outside `media`.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass

import av
import av.error
import numpy as np
import numpy.typing as npt

from omni_server.media.errors import MediaError

__all__ = ["AudioFileError", "DecodeLimits", "decode_audio_file", "sniff_format", "ACCEPTED_CONTENT_TYPES"]

SAMPLE_RATE_HZ = 16_000
# What a real recording has: telephony's 8 kHz down to old 4 kHz dictation, up to 384 kHz studio files.
MIN_INPUT_RATE_HZ = 4_000
MAX_INPUT_RATE_HZ = 384_000
MAX_CHANNELS = 8
# One decoded frame may resample to at most this much output (FLAC's largest block at 4 kHz is 16.4 s).
MAX_FRAME_OUTPUT_S = 20.0
# What the page and API clients may declare; "" or application/octet-stream means "look at the bytes".
ACCEPTED_CONTENT_TYPES = frozenset(
    {
        "audio/wav",
        "audio/x-wav",
        "audio/wave",
        "audio/vnd.wave",
        "audio/mpeg",
        "audio/mp3",
        "audio/mp4",
        "audio/x-m4a",
        "audio/m4a",
        "audio/aac",
        "audio/ogg",
        "audio/opus",
        "audio/webm",
        "audio/flac",
        "audio/x-flac",
        "application/octet-stream",
        "",
    }
)
_IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")


class AudioFileError(MediaError):
    """The file cannot be used as a voice; the message says why in plain words, for the person uploading."""

    kind = "voice"


@dataclass(frozen=True)
class DecodeLimits:
    max_bytes: int = 8 * 1024 * 1024
    max_duration_s: float = 120.0
    max_decode_s: float = 10.0


def sniff_format(data: bytes) -> str:
    """The PyAV demuxer for these bytes, from their signature; raises `AudioFileError` for anything else."""
    head = data[:16]
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"  # also webm
    if head[4:8] == b"ftyp":
        return "mov"  # mp4, m4a
    if head[:3] == b"ID3":
        return "mp3"
    if len(head) >= 2 and head[0] == 0xFF:
        if head[1] & 0xF6 == 0xF0:
            return "aac"  # ADTS: sync bits and layer 00
        if head[1] & 0xE0 == 0xE0:
            return "mp3"
    if head.startswith(_IMAGE_MAGIC) or head[8:12] == b"WEBP":
        raise AudioFileError("This is an image, not a sound recording. Upload or record someone speaking.")
    raise AudioFileError(
        "This file is not an audio format the server reads. Use wav, mp3, m4a/aac, ogg/opus, webm or flac."
    )


def check_content_type(content_type: str) -> None:
    """Refuse a declared type that is plainly not audio (the bytes are checked again when decoded)."""
    base = content_type.split(";", 1)[0].strip().lower()
    if base not in ACCEPTED_CONTENT_TYPES:
        raise AudioFileError(
            f"A voice must be an audio file; this one was sent as {base!r}. Use wav, mp3, m4a/aac, ogg/opus, webm or flac."
        )


def decode_audio_file(
    data: bytes, limits: DecodeLimits, *, clock: Callable[[], float] = time.monotonic
) -> npt.NDArray[np.float32]:
    """Decode the first audio stream of `data` to mono 16 kHz float32, within `limits`.

    Raises `AudioFileError` (a plain-words message) for an oversized, unknown, corrupt, empty, video,
    image or too-long file, or one that takes too long to decode.
    """
    if len(data) > limits.max_bytes:
        raise AudioFileError(f"The file is {_mib(len(data))}; the limit is {_mib(limits.max_bytes)}.")
    if not data:
        raise AudioFileError("The file is empty.")
    fmt = sniff_format(data)
    started = clock()
    pieces: list[npt.NDArray[np.float32]] = []
    input_s = 0.0  # decoded so far, at each frame's own rate: checked before the frame is resampled
    try:
        with av.open(io.BytesIO(data), mode="r", format=fmt) as container:
            stream = _audio_stream(container, limits)
            resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE_HZ)
            for packet in container.demux(stream):
                for frame in packet.decode():
                    input_s += _frame_s(frame)
                    if input_s > limits.max_duration_s:
                        raise AudioFileError(_too_long(limits))
                    for out in resampler.resample(frame):
                        _take(out, pieces)
                if clock() - started > limits.max_decode_s:
                    raise AudioFileError("The file took too long to decode; try a shorter or simpler recording.")
            for out in resampler.resample(None):
                _take(out, pieces)
    except av.error.FFmpegError as e:
        raise AudioFileError("The file is damaged or incomplete and could not be decoded.") from e
    except AudioFileError:
        raise
    except (UnicodeDecodeError, ValueError, IndexError) as e:  # PyAV's own checks on malformed streams
        raise AudioFileError("The file is damaged or incomplete and could not be decoded.") from e
    samples = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    if samples.size == 0:
        raise AudioFileError("The file holds no sound.")
    if not np.isfinite(samples).all():
        raise AudioFileError("The file is damaged: it decodes to invalid samples.")
    return samples


def _audio_stream(container: av.container.InputContainer, limits: DecodeLimits) -> av.audio.stream.AudioStream:
    real_video = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if real_video:
        raise AudioFileError("This is a video, not a sound recording. Upload only the audio (or record it here).")
    if not container.streams.audio:
        raise AudioFileError("The file has no audio in it.")
    if container.duration is not None and container.duration / av.time_base > limits.max_duration_s + 1.0:
        raise AudioFileError(_too_long(limits))  # the header says so: refuse before decoding anything
    stream = container.streams.audio[0]
    # Declared values, before any sample is decoded (0 where the container leaves them to the frames).
    _check_shape(stream.codec_context.sample_rate or None, stream.codec_context.channels or None)
    return stream


def _check_shape(rate_hz: int | None, channels: int | None) -> None:
    if rate_hz is not None and not MIN_INPUT_RATE_HZ <= rate_hz <= MAX_INPUT_RATE_HZ:
        raise AudioFileError(
            f"The file declares a sample rate of {rate_hz} Hz, which no recording has "
            f"({MIN_INPUT_RATE_HZ // 1000} to {MAX_INPUT_RATE_HZ // 1000} kHz are accepted)."
        )
    if channels is not None and not 1 <= channels <= MAX_CHANNELS:
        raise AudioFileError(f"The file declares {channels} channels; at most {MAX_CHANNELS} are accepted.")


def _frame_s(frame: av.AudioFrame) -> float:
    """A decoded frame's duration at its own rate, after checking it (a frame may change the rate)."""
    _check_shape(frame.sample_rate, len(frame.layout.channels))
    if frame.samples > MAX_FRAME_OUTPUT_S * frame.sample_rate:  # its output at 16 kHz would be over the cap
        raise AudioFileError("The file is damaged: one of its frames is far longer than any encoder writes.")
    return frame.samples / frame.sample_rate


def _take(frame: av.AudioFrame, pieces: list[npt.NDArray[np.float32]]) -> None:
    pieces.append(np.asarray(frame.to_ndarray(), dtype=np.float32).reshape(-1))


def _too_long(limits: DecodeLimits) -> str:
    return (
        f"The recording is longer than {limits.max_duration_s:.0f} s. A voice needs 5 to 15 seconds of clear "
        "speech: upload a shorter clip."
    )


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"
