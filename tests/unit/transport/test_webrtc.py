"""Tests for omni_server.transport.webrtc's pure parts: --ice-server parsing, loopback ICE, the offer event."""

from __future__ import annotations

import pytest

from omni_server.config import load_settings
from omni_server.errors import ProtocolError
from omni_server.protocol import WebRtcOffer, decode_client_event
from omni_server.transport.webrtc import IceServer, is_loopback, loopback_candidates_only


def test_ice_server_urls_with_and_without_credentials() -> None:
    """stun: is a plain URL; turn:USER:CREDENTIAL@HOST:PORT splits into the RTCIceServer fields."""
    assert IceServer.parse("stun:stun.example.org:3478").for_page() == {"urls": "stun:stun.example.org:3478"}
    turn = IceServer.parse("turn:alice:s3cr:et@turn.example.org:3478?transport=tcp")
    assert turn.for_page() == {
        "urls": "turn:turn.example.org:3478?transport=tcp",
        "username": "alice",
        "credential": "s3cr:et",
    }
    assert turn.for_aiortc().username == "alice"
    with pytest.raises(ValueError, match="USER:CREDENTIAL"):
        IceServer.parse("turn:alice@turn.example.org:3478")


def test_ice_server_setting_is_repeatable_and_validated() -> None:
    """--ice-server may be given several times (or space-separated in OMNI_ICE_SERVER); other schemes are refused."""
    flags = load_settings(["--ice-server", "stun:a:3478", "--ice-server", "turn:u:p@b:3478"], {})
    assert flags.ice_server == ("stun:a:3478", "turn:u:p@b:3478")
    assert load_settings([], {"OMNI_ICE_SERVER": "stun:a:1 stun:b:2"}).ice_server == ("stun:a:1", "stun:b:2")
    assert load_settings([], {}).ice_server == ()
    for bad in ("https://example.org", "turn:alice@turn.example.org:3478", "stun:"):
        with pytest.raises(SystemExit, match="ice_server"):
            load_settings(["--ice-server", bad], {})


def test_loopback_detection() -> None:
    """127.0.0.0/8, ::1 and localhost are loopback; the wildcard and LAN addresses are not."""
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "192.168.1.5", "fd00::2", "abc.local"))


def test_offer_keeps_only_loopback_candidates() -> None:
    """LAN and mDNS candidates are dropped from an offer on a loopback server; everything else is kept."""
    sdp = "\r\n".join(
        [
            "v=0",
            "a=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host",
            "a=candidate:2 1 udp 2122260223 192.168.1.5 50001 typ host",
            "a=candidate:3 1 udp 2122260223 6d1c-uuid.local 50002 typ host",
            "a=ice-ufrag:abcd",
        ]
    )
    kept = loopback_candidates_only(sdp).splitlines()
    assert kept == ["v=0", "a=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host", "a=ice-ufrag:abcd"]


def test_webrtc_offer_event() -> None:
    """webrtc.offer carries the SDP text; without it the error says what is missing."""
    assert decode_client_event('{"type":"webrtc.offer","sdp":"v=0"}', max_bytes=1000) == WebRtcOffer(sdp="v=0")
    with pytest.raises(ProtocolError, match="SDP") as info:
        decode_client_event('{"type":"webrtc.offer"}', max_bytes=1000)
    assert info.value.code == "invalid_sdp"
