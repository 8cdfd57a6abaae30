"""A video call through the official `openbmb-realtime` SDK, unchanged, against omni_server.

    MODELBEST_API_KEY=<token> python examples/sdk_video_session.py https://localhost:8443 clip.mp4 reply.wav

Each second of the clip goes out as one `send_audio_video` (1 s of 16 kHz float32 audio + one JPEG
frame), in real time, then silence with the last frame until the reply has arrived.
For a self-signed certificate, point SSL_CERT_FILE at the server's ssl/cert.pem.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import sys

import numpy as np
import soundfile as sf
from openbmb_realtime import AudioDelta, RealtimeClient, SessionClosed, TextDelta, TurnCompleted
from PIL import Image


def read_clip(path: str) -> list[tuple[np.ndarray, bytes]]:
    """One (1 s of 16 kHz audio, JPEG) pair per second of the clip."""
    from moviepy import VideoFileClip

    with VideoFileClip(path) as clip:
        audio = clip.audio.to_soundarray(fps=16000).astype(np.float32)
        audio = audio.mean(axis=1) if audio.ndim == 2 else audio
        seconds = int(np.ceil(clip.duration))
        units = []
        for i in range(seconds):
            frame = clip.get_frame(min(i + 0.5, clip.duration - 0.05))
            buf = io.BytesIO()
            Image.fromarray(frame).save(buf, format="JPEG", quality=80)
            piece = np.zeros(16000, np.float32)
            chunk = audio[i * 16000 : (i + 1) * 16000]
            piece[: len(chunk)] = chunk
            units.append((piece, buf.getvalue()))
    return units


async def call(
    base_url: str, units: list[tuple[np.ndarray, bytes]], *, realtime: bool = True
) -> tuple[str, np.ndarray]:
    client = RealtimeClient(api_key=os.environ["MODELBEST_API_KEY"], base_url=base_url)
    session = await client.video.connect(model="minicpm-o-2.6")
    text: list[str] = []
    audio: list[np.ndarray] = []

    async def receive() -> None:
        async for event in session:
            if isinstance(event, TextDelta):
                text.append(event.text)
            elif isinstance(event, AudioDelta):
                audio.append(np.frombuffer(event.audio, dtype="<f4"))
            elif isinstance(event, (TurnCompleted, SessionClosed)) and (audio or isinstance(event, SessionClosed)):
                return

    receiver = asyncio.create_task(receive())
    last_frame = units[-1][1]
    silence = np.zeros(16000, np.float32)
    for piece, jpeg in units + [(silence, last_frame)] * 2:
        await session.send_audio_video(piece.tobytes(), jpeg)
        await asyncio.sleep(1.0 if realtime else 0.05)
    while not receiver.done():  # in real time: the server refuses audio sent faster, beyond a 10 s burst
        await session.send_audio_video(silence.tobytes(), last_frame)
        await asyncio.sleep(1.0)
    await receiver
    await session.close()
    return "".join(text), (np.concatenate(audio) if audio else np.zeros(0, np.float32))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base_url")
    parser.add_argument("clip")
    parser.add_argument("reply_wav")
    args = parser.parse_args()
    text, reply = asyncio.run(call(args.base_url, read_clip(args.clip)))
    sf.write(args.reply_wav, reply, 24000)
    print(f"reply text: {text!r}")
    print(f"reply audio: {len(reply) / 24000:.2f} s -> {args.reply_wav}")
    sys.exit(0 if len(reply) else 1)


if __name__ == "__main__":
    main()
