"""WebRTC offers: a browser-sized offer passes; oversized, many-sectioned and malformed ones are invalid_sdp."""

from __future__ import annotations

import pytest
from aiortc import RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from omni_server.errors import ProtocolError
from omni_server.transport.sdp import MAX_MEDIA_SECTIONS, check_offer, check_offer_size


@pytest.fixture
async def offer() -> str:
    """An offer as a peer makes it: microphone, camera and the events data channel."""
    pc = RTCPeerConnection()
    pc.addTrack(AudioStreamTrack())
    pc.addTrack(VideoStreamTrack())
    pc.createDataChannel("events")
    await pc.setLocalDescription(await pc.createOffer())
    sdp: str = pc.localDescription.sdp
    await pc.close()
    return sdp


def test_a_call_offer_passes(offer: str) -> None:
    """Microphone, camera and data channel: three sections, a few KB."""
    check_offer(offer)
    assert offer.count("\nm=") == 3 and len(offer) < 10_000


def test_oversized_offers_are_refused_before_parsing(offer: str) -> None:
    """6.7 MB with 6,000 m-lines, or 9 sections within the size limit: refused by counting alone."""
    section = offer[offer.index("m=audio") : offer.index("m=video")]
    huge = offer + section * 6000
    assert len(huge) > 6_000_000
    with pytest.raises(ProtocolError, match="characters") as refused:
        check_offer_size(huge)
    assert refused.value.code == "invalid_sdp"
    many = offer + "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\n" * (MAX_MEDIA_SECTIONS - 2)
    with pytest.raises(ProtocolError, match="9 media sections"):
        check_offer_size(many)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda sdp: sdp.replace("a=setup:actpass", "a=setup:bogus"), "could not be parsed"),
        (lambda sdp: sdp.replace("a=mid:0", "a=mid:"), "empty a=mid"),
        (lambda sdp: "v=0\r\nm=audio x y z\r\n", "could not be parsed"),
        (lambda sdp: sdp.replace("m=video", "m=hologram"), "kind 'hologram'"),
    ],
)
def test_malformed_offers_are_invalid_sdp(offer: str, change: object, why: str) -> None:
    """What aiortc would crash on (an unknown DTLS role, an empty mid, junk) is a plain invalid_sdp."""
    with pytest.raises(ProtocolError, match=why) as refused:
        check_offer(change(offer))  # type: ignore[operator]
    assert refused.value.code == "invalid_sdp"
