"""The microphone track's jitter buffer: Opus packets to the decoder as soon as they are in order.

aiortc gives every audio receiver `JitterBuffer(capacity=16, prefetch=4)`: a packet reaches the
decoder only once four more have arrived, so everything the user says reaches the VAD 80 ms late, and
the turn ends 80 ms later than on the WebSocket path. Worse, it hands out one packet per packet received,
so after a single lost packet it waits until 16 have piled up and stays that far behind, 280 ms, for
the rest of the call. aiortc has no setting for either; `use_low_delay_jitter_buffer` swaps the private
attribute (and leaves aiortc's own in place, with a warning, if a new aiortc has moved it).

`AudioJitterBuffer` releases each packet the moment it is the next in sequence. A missing packet is
waited for while `wait_packets` later ones arrive (reordering on a real network), then given up
(the decoder sees a jump in timestamps); the packets that waited behind it go to the decoder together,
as one Opus packet of several frames (RFC 6716 §3.2.5, code 3), so no backlog remains. Packets that
cannot be joined (different modes, or not single-frame) are dropped but the newest, for the same reason.

Must not import: torch, the engine, the session.
"""

from __future__ import annotations

import logging

from aiortc import RTCRtpReceiver
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket

logger = logging.getLogger(__name__)
_PRIVATE_ATTR = "_RTCRtpReceiver__jitter_buffer"
_MAX_PACKET_MS = 120.0  # an Opus packet holds at most 120 ms
_BEHIND = 0x8000  # sequence distances from here on are packets from the past


def frame_ms(toc: int) -> float:
    """Duration of one Opus frame, from its configuration (the TOC byte's top 5 bits; RFC 6716 table 2)."""
    config = toc >> 3
    if config < 12:  # SILK: 10, 20, 40, 60 ms
        return (10.0, 20.0, 40.0, 60.0)[config % 4]
    if config < 16:  # hybrid: 10, 20 ms
        return (10.0, 20.0)[config % 2]
    return (2.5, 5.0, 10.0, 20.0)[config % 4]  # CELT


def join_opus_packets(packets: list[bytes]) -> bytes | None:
    """One code-3 (several frames, VBR) Opus packet holding the frames of single-frame `packets`, in order.

    None when they cannot be joined: not all code 0 (one frame each), different configurations or
    channel counts, frames over 1275 bytes, or more than 120 ms in all."""
    if len(packets) < 2 or any(len(p) < 2 for p in packets):
        return None
    toc = packets[0][0]
    if toc & 0x03 or any(p[0] != toc for p in packets):
        return None
    frames = [p[1:] for p in packets]
    if len(frames) * frame_ms(toc) > _MAX_PACKET_MS or any(len(f) > 1275 for f in frames):
        return None
    out = bytearray([toc | 0x03, 0x80 | len(frames)])  # code 3; VBR, no padding, M frames
    for f in frames[:-1]:  # every length but the last (RFC 6716 §3.2.1)
        n = len(f)
        out += bytes([n]) if n < 252 else bytes([252 + (n & 3), (n - 252 - (n & 3)) >> 2])
    for f in frames:
        out += f
    return bytes(out)


class AudioJitterBuffer(JitterBuffer):
    """In-order Opus packets out at once; a gap waited for `wait_packets`, then skipped without a backlog."""

    def __init__(self, *, wait_packets: int = 2, capacity: int = 16) -> None:
        super().__init__(capacity=capacity)
        self._wait = wait_packets
        self._next: int | None = None  # the sequence number due next
        self._held: dict[int, RtpPacket] = {}  # arrived ahead of a missing one; at most `capacity`
        self.lost = 0  # packets given up on
        self.late = 0  # packets that came after they had been given up on (or twice)
        self.dropped = 0  # packets released together that could not be joined: all but the newest

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        seq = packet.sequence_number
        due = seq if self._next is None else self._next
        ahead = (seq - due) & 0xFFFF
        if ahead >= _BEHIND:
            self.late += 1
            return False, None
        if ahead >= self.capacity:  # a long outage or a restarted sender: start again from here
            self.lost += ahead - len(self._held)
            self._held.clear()
            due = seq
        self._held[seq] = packet
        ready = self._take_from(due)
        if not ready and max((s - due) & 0xFFFF for s in self._held) >= self._wait:
            oldest = min(self._held, key=lambda s: (s - due) & 0xFFFF)
            self.lost += (oldest - due) & 0xFFFF
            ready = self._take_from(oldest)
        return False, self._frame(ready) if ready else None

    def _take_from(self, due: int) -> list[RtpPacket]:
        """The held packets from `due` on that are in sequence; `due` moves past them."""
        ready = []
        while due in self._held:
            ready.append(self._held.pop(due))
            due = (due + 1) & 0xFFFF
        self._next = due
        return ready

    def _frame(self, ready: list[RtpPacket]) -> JitterFrame:
        datas: list[bytes] = [p._data for p in ready]  # type: ignore[attr-defined]  # set by the receiver
        joined = join_opus_packets(datas)
        if joined is not None:
            return JitterFrame(data=joined, timestamp=ready[0].timestamp)
        self.dropped += len(ready) - 1
        return JitterFrame(data=datas[-1], timestamp=ready[-1].timestamp)


def use_low_delay_jitter_buffer(receiver: RTCRtpReceiver) -> AudioJitterBuffer | None:
    """Give an audio receiver an `AudioJitterBuffer` in place of aiortc's (None: aiortc's is kept)."""
    if not isinstance(getattr(receiver, _PRIVATE_ATTR, None), JitterBuffer):
        logger.warning("aiortc's receiver has no %s: its own audio jitter buffer (80 ms) stays", _PRIVATE_ATTR)
        return None
    buffer = AudioJitterBuffer()
    setattr(receiver, _PRIVATE_ATTR, buffer)
    return buffer
