"""The microphone's jitter buffer: Opus packets out as soon as they are in order, gaps skipped without a
backlog, and packets joined into one that libopus decodes to the same audio."""

from __future__ import annotations

import fractions

import av
import numpy as np
import numpy.typing as npt
from aiortc import RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

from omni_server.transport.jitter import AudioJitterBuffer, frame_ms, join_opus_packets, use_low_delay_jitter_buffer


def opus_packets(n: int) -> list[bytes]:
    """`n` consecutive 20 ms Opus packets of a 440 Hz tone, from libopus as aiortc configures it."""
    codec = av.CodecContext.create("libopus", "w")
    codec.bit_rate, codec.format, codec.layout, codec.sample_rate = 96000, "s16", "stereo", 48000  # type: ignore[attr-defined]
    codec.time_base = fractions.Fraction(1, 48000)
    packets: list[bytes] = []
    for i in range(n + 4):  # the encoder's lookahead holds the last ones back
        t = (np.arange(960) + i * 960) / 48000
        mono = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.repeat(mono, 2).reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = 48000, i * 960, fractions.Fraction(1, 48000)
        packets += [bytes(p) for p in codec.encode(frame)]  # type: ignore[attr-defined]
    return packets[:n]


def decode(packets: list[bytes]) -> npt.NDArray[np.int16]:
    codec = av.CodecContext.create("libopus", "r")
    codec.format, codec.layout, codec.sample_rate = "s16", "stereo", 48000  # type: ignore[attr-defined]
    out = [f.to_ndarray().reshape(-1) for p in packets for f in codec.decode(av.Packet(p))]  # type: ignore[attr-defined]
    return np.concatenate(out)


def rtp(seq: int, data: bytes = b"\x78\x00") -> RtpPacket:
    packet = RtpPacket(sequence_number=seq & 0xFFFF, timestamp=seq * 960 & 0xFFFFFFFF)
    packet._data = data  # type: ignore[attr-defined]  # what aiortc's receiver sets before `add`
    return packet


def test_joined_packet_decodes_to_the_same_audio() -> None:
    """Three single-frame packets joined into one code-3 packet decode to exactly what they decode to apart."""
    packets = opus_packets(3)
    assert all(p[0] & 0x03 == 0 for p in packets) and frame_ms(packets[0][0]) == 20.0
    joined = join_opus_packets(packets)
    assert joined is not None and joined[0] & 0x03 == 3
    assert np.array_equal(decode([joined]), decode(packets))


def test_long_frames_take_two_length_bytes() -> None:
    """A frame of 252 bytes or more is announced in two bytes (RFC 6716 §3.2.1) and still decodes the same."""
    packets = [b"\x78" + bytes(300), b"\x78" + bytes(10)]  # CELT FB 20 ms; the payload bytes do not matter here
    joined = join_opus_packets(packets)
    assert joined is not None
    assert joined[:4] == bytes([0x78 | 3, 0x82, 252, 12]) and len(joined) == 4 + 300 + 10  # 300 = 4 × 12 + 252


def test_packets_that_cannot_be_joined() -> None:
    """Different modes, multi-frame packets, or over 120 ms of audio are not joined."""
    assert join_opus_packets([b"\x78\x01", b"\x70\x01"]) is None  # different configurations
    assert join_opus_packets([b"\x79\x01\x01", b"\x79\x01\x01"]) is None  # code 1: two frames each
    assert join_opus_packets([b"\x78\x01"] * 7) is None  # 7 × 20 ms
    assert join_opus_packets([b"\x78\x01"]) is None


def test_in_order_packets_come_out_at_once() -> None:
    """Every packet that is next in sequence is handed to the decoder when it arrives (aiortc's waits for 4 more)."""
    buffer = AudioJitterBuffer()
    for seq in range(65530, 65545):  # across the sequence number wrap
        _, frame = buffer.add(rtp(seq))
        assert frame is not None and frame.timestamp == seq * 960 & 0xFFFFFFFF


def test_a_lost_packet_is_waited_for_then_skipped_without_a_backlog() -> None:
    """A gap holds two packets back, then they come out together and the next ones are on time again."""
    buffer = AudioJitterBuffer(wait_packets=2)
    assert buffer.add(rtp(0))[1] is not None
    assert buffer.add(rtp(2))[1] is None  # 1 is missing
    _, frame = buffer.add(rtp(3))  # waited for two: 1 is lost
    assert frame is not None and frame.data == join_opus_packets([b"\x78\x00", b"\x78\x00"])
    assert frame.timestamp == 2 * 960 and buffer.lost == 1
    assert buffer.add(rtp(1))[1] is None and buffer.late == 1  # too late now
    _, frame = buffer.add(rtp(4))
    assert frame is not None and frame.timestamp == 4 * 960  # no backlog left


def test_reordered_packet_within_the_wait_is_kept() -> None:
    """A packet overtaken by the next one is still played, in order."""
    buffer = AudioJitterBuffer(wait_packets=2)
    buffer.add(rtp(10))
    assert buffer.add(rtp(12))[1] is None
    _, frame = buffer.add(rtp(11))
    assert frame is not None and frame.data == join_opus_packets([b"\x78\x00", b"\x78\x00"])
    assert buffer.lost == 0


def test_unjoinable_backlog_keeps_the_newest_and_a_jump_restarts() -> None:
    """Packets that cannot be joined: the newest goes on, the others are counted dropped; a far jump restarts."""
    buffer = AudioJitterBuffer(wait_packets=2, capacity=16)
    buffer.add(rtp(0))
    buffer.add(rtp(2, b"\x70\x05"))
    _, frame = buffer.add(rtp(3, b"\x78\x06"))
    assert frame is not None and frame.data == b"\x78\x06" and buffer.dropped == 1
    _, frame = buffer.add(rtp(100))
    assert frame is not None and frame.timestamp == 100 * 960 and buffer.lost == 1 + 96


async def test_installed_on_a_real_receiver() -> None:
    """The swap reaches aiortc's receiver (a new aiortc that moved its attribute keeps its own, with a warning)."""
    pc = RTCPeerConnection()
    try:
        receiver = pc.addTransceiver("audio").receiver
        buffer = use_low_delay_jitter_buffer(receiver)
        assert isinstance(buffer, AudioJitterBuffer) and isinstance(buffer, JitterBuffer)
        assert receiver._RTCRtpReceiver__jitter_buffer is buffer  # type: ignore[attr-defined]
        assert use_low_delay_jitter_buffer(object()) is None  # type: ignore[arg-type]
    finally:
        await pc.close()
