"""An aiortc peer for the WebRTC path: a microphone track that plays what it is given, a test-pattern
camera, the events data channel, and the reply track recorded frame by frame."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
import numpy.typing as npt
from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack, VideoStreamTrack
from websockets.asyncio.client import ClientConnection, connect

from omni_server.app import OmniServer
from omni_server.media.resample import resample
from omni_server.transport.tracks import ReplyAudioTrack
from tests.conftest import TOKEN, timeout
from tests.integration.realtime_client import client_ssl


@dataclass
class ReceivedAudio:
    """The reply track as heard: (arrival time, rms) of every 20 ms frame, and its samples (mono, in order)."""

    frames: list[tuple[float, float]] = field(default_factory=list)
    samples: list[npt.NDArray[np.float32]] = field(default_factory=list)
    rate_hz: int = 48_000

    def loud_since(self, since: float, threshold: float = 1e-3) -> int:
        return sum(1 for at, rms in self.frames if at >= since and rms > threshold)


class WebRtcClient:
    def __init__(self, ws: ClientConnection, pc: RTCPeerConnection, channel: RTCDataChannel) -> None:
        self.ws = ws
        self.pc = pc
        self.channel = channel
        self.mic = ReplyAudioTrack()  # a paced track that plays whatever 24 kHz audio is written to it
        self.signals: list[dict[str, Any]] = []  # events on the signalling socket
        self.events: list[dict[str, Any]] = []  # events on the data channel
        self.heard = ReceivedAudio()
        self._event_queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._frame_heard = asyncio.Event()
        self._drain: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, server: OmniServer, mode: str = "audio", token: str = TOKEN) -> WebRtcClient:
        ws = await connect(
            f"wss://127.0.0.1:{server.port}/v1/realtime?mode={mode}&transport=webrtc",
            ssl=client_ssl(server),
            additional_headers={"Authorization": f"Bearer {token}"},
            subprotocols=["map.realtime"],  # type: ignore[list-item]
        )
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        client = cls(ws, pc, pc.createDataChannel("events"))
        client.channel.on("message", lambda raw: client._event_queue.put_nowait(json.loads(raw)))
        pc.on("track", client._on_track)
        return client

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._drain = asyncio.create_task(self._record(track))

    async def _record(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            assert isinstance(frame, av.AudioFrame) and not frame.format.is_planar  # Opus decodes to packed s16
            samples = frame.to_ndarray().astype(np.float32) / 32768.0
            self.heard.frames.append((time.monotonic(), float(np.sqrt(np.mean(samples**2)))))
            self.heard.rate_hz = frame.sample_rate
            self.heard.samples.append(samples.reshape(-1, len(frame.layout.channels)).mean(axis=1))
            self._frame_heard.set()

    async def heard_more(self) -> None:
        """Wait (bounded) for the next frame of the reply track."""
        self._frame_heard.clear()
        await asyncio.wait_for(self._frame_heard.wait(), timeout(5))

    async def signal(self, event_type: str, **fields: Any) -> None:
        await self.ws.send(json.dumps({"type": event_type, **fields}))

    async def next_signal(self) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(await asyncio.wait_for(self.ws.recv(), timeout(30)))
        self.signals.append(event)
        return event

    async def signal_until(self, event_type: str) -> dict[str, Any]:
        while (event := await self.next_signal())["type"] != event_type:
            pass
        return event

    def send(self, event_type: str, **fields: Any) -> None:
        self.channel.send(json.dumps({"type": event_type, **fields}))

    async def until(self, event_type: str, limit_s: float = 30) -> dict[str, Any]:
        async with asyncio.timeout(timeout(limit_s)):
            while True:
                event = await self._event_queue.get()
                self.events.append(event)
                if event["type"] == event_type:
                    return event

    async def start(self, *, video: bool = False, **payload: Any) -> dict[str, Any]:
        """Offer the tracks and the channel, get the answer, and wait for `session.created`."""
        await self.signal_until("session.queue_done")
        self.pc.addTrack(self.mic)
        if video:
            self.pc.addTrack(VideoStreamTrack())
        await self.pc.setLocalDescription(await self.pc.createOffer())
        await self.signal("session.init", payload=payload)
        await self.signal("webrtc.offer", sdp=self.pc.localDescription.sdp)
        answer = await self.signal_until("webrtc.answer")
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        return await self.until("session.created")

    def say(self, speech_16k: npt.NDArray[np.float32]) -> None:
        """Speak: the utterance goes out on the microphone track in real time, then silence."""
        self.mic.write(resample(speech_16k, 16_000, 24_000))
        self.mic.end()

    def of_type(self, event_type: str) -> list[dict[str, Any]]:
        """Events of this type received so far (including ones no `until` has reached yet)."""
        pending = [*self.events]
        for _ in range(self._event_queue.qsize()):
            pending.append(self._event_queue.get_nowait())
        for event in pending[len(self.events) :]:
            self._event_queue.put_nowait(event)  # `until` still sees them, in order
        return [e for e in pending if e["type"] == event_type]

    async def close(self) -> None:
        await self.pc.close()
        await self.ws.close()
        if self._drain is not None:
            await self._drain
