"""Audio files in every upload format, encoded at test time with PyAV (nothing is kept in git)."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
import numpy.typing as npt

# extension: (container format, codec, sample rate, channels)
FORMATS = {
    "wav": ("wav", "pcm_s16le", 44_100, 2),
    "mp3": ("mp3", "libmp3lame", 44_100, 1),
    "m4a": ("ipod", "aac", 48_000, 2),
    "ogg": ("ogg", "libopus", 48_000, 1),
    "webm": ("webm", "libopus", 48_000, 1),
    "flac": ("flac", "flac", 22_050, 1),
}


class _LiveSink:
    """A write-only stream: muxers cannot seek back to write a duration, as in a browser's MediaRecorder."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, chunk: bytes) -> int:
        self.data += bytes(chunk)
        return len(chunk)

    def seekable(self) -> bool:
        return False


def encode(samples_16k: npt.NDArray[np.float32], ext: str, *, video: bool = False, live: bool = False) -> bytes:
    """`samples_16k` (mono float) as an `ext` file, resampled and up-mixed to that format's usual layout.

    `live`: written without seeking, so the container does not say how long it is."""
    fmt, codec, rate, channels = FORMATS[ext]
    sink = _LiveSink()
    buf = io.BytesIO()
    with av.open(sink if live else buf, mode="w", format=fmt) as out:
        vstream = None
        if video:
            vstream = out.add_stream("mpeg4", rate=10)
            vstream.width, vstream.height, vstream.pix_fmt = 64, 48, "yuv420p"
        stream = out.add_stream(codec, rate=rate)
        stream.layout = "stereo" if channels == 2 else "mono"
        frame = av.AudioFrame.from_ndarray(
            np.asarray(samples_16k, np.float32).reshape(1, -1), format="flt", layout="mono"
        )
        frame.sample_rate = 16_000
        frame.time_base = Fraction(1, 16_000)
        frame.pts = 0
        resampler = av.AudioResampler(format=stream.format.name, layout=stream.layout.name, rate=rate)
        for piece in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(piece):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
        if vstream is not None:
            for i in range(5):
                image = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 40 * i, np.uint8), format="rgb24")
                image.pts = i
                for packet in vstream.encode(image.reformat(format="yuv420p")):
                    out.mux(packet)
            for packet in vstream.encode(None):
                out.mux(packet)
    return bytes(sink.data) if live else buf.getvalue()


def flac_bomb(rate_hz: int, *, frames: int = 1, block: int = 65_535) -> bytes:
    """A FLAC of `frames` constant blocks (13 bytes each) declaring `rate_hz` and an unknown length.

    One 65 535-sample block at 16 Hz is 4096 s: 55 bytes that resample to 65 M samples at 16 kHz."""
    info = 4096
    for value, bits in ((block, 16), (0, 24), (0, 24), (rate_hz, 20), (0, 3), (15, 5), (0, 36), (0, 128)):
        info = (info << bits) | value  # max block, frame sizes unknown, rate, mono, 16-bit, length unknown, no MD5
    data = b"fLaC" + bytes([0x80, 0, 0, 34]) + info.to_bytes(34, "big")
    for n in range(frames):
        # Fixed blocking, block size in 16 bits after the header, rate and depth from STREAMINFO, mono.
        head = bytes([0xFF, 0xF8, 0x70, 0x00, n]) + (block - 1).to_bytes(2, "big")
        frame = head + bytes([_crc(head, 8, 0x07)]) + bytes([0x00]) + (0x1000).to_bytes(2, "big")  # CONSTANT
        data += frame + _crc(frame, 16, 0x8005).to_bytes(2, "big")
    return data


def _crc(data: bytes, width: int, poly: int) -> int:
    """FLAC's CRC-8 (header) and CRC-16 (frame): MSB first, initial value 0."""
    crc, top, mask = 0, 1 << (width - 1), (1 << width) - 1
    for byte in data:
        crc ^= byte << (width - 8)
        for _ in range(8):
            crc = ((crc << 1) ^ poly) & mask if crc & top else (crc << 1) & mask
    return crc
