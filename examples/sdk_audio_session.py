"""A spoken conversation through the official `openbmb-realtime` SDK, unchanged, against omni_server.

    MODELBEST_API_KEY=<token> python examples/sdk_audio_session.py https://localhost:8443 question.wav reply.wav

The WAV is streamed in real time (16 kHz mono float32, 100 ms pieces) followed by silence, so the
server's turn detection ends the turn; the reply's text is printed and its speech written to a WAV.
For a self-signed certificate, point SSL_CERT_FILE at the server's ssl/cert.pem.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import numpy as np
import soundfile as sf
from openbmb_realtime import AudioDelta, RealtimeClient, SessionClosed, TextDelta, TurnCompleted

CHUNK_S = 0.1


def load_16k_mono(path: str) -> np.ndarray:
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if rate != 16000:
        import soxr

        audio = soxr.resample(audio, rate, 16000)
    return audio.astype(np.float32)


async def converse(base_url: str, question: np.ndarray, *, realtime: bool = True) -> tuple[str, np.ndarray]:
    client = RealtimeClient(api_key=os.environ["MODELBEST_API_KEY"], base_url=base_url)
    session = await client.audio.connect(model="minicpm-o-2.6", system_prompt="You are a helpful voice assistant.")
    text: list[str] = []
    audio: list[np.ndarray] = []

    async def receive() -> None:
        async for event in session:
            if isinstance(event, TextDelta):
                text.append(event.text)
            elif isinstance(event, AudioDelta):
                audio.append(np.frombuffer(event.audio, dtype="<f4"))
            elif isinstance(event, TurnCompleted) and audio:
                return
            elif isinstance(event, SessionClosed):
                return

    receiver = asyncio.create_task(receive())
    step = int(16000 * CHUNK_S)
    padded = np.concatenate([question, np.zeros(16000 * 2, np.float32)])
    for start in range(0, len(padded), step):
        if receiver.done():
            break
        await session.send_audio(padded[start : start + step].tobytes())
        await asyncio.sleep(CHUNK_S if realtime else 0.005)
    silence = np.zeros(step, np.float32).tobytes()
    while not receiver.done():  # keep the microphone open, as a live client would: in real time (the server
        await session.send_audio(silence)  # refuses audio sent faster, beyond a 10 s burst)
        await asyncio.sleep(CHUNK_S)
    await receiver
    await session.close()
    return "".join(text), (np.concatenate(audio) if audio else np.zeros(0, np.float32))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base_url")
    parser.add_argument("question_wav")
    parser.add_argument("reply_wav")
    args = parser.parse_args()
    text, reply = asyncio.run(converse(args.base_url, load_16k_mono(args.question_wav)))
    sf.write(args.reply_wav, reply, 24000)
    print(f"reply text: {text!r}")
    print(f"reply audio: {len(reply) / 24000:.2f} s -> {args.reply_wav}")
    sys.exit(0 if len(reply) else 1)


if __name__ == "__main__":
    main()
