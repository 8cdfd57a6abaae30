"""`--webrtc-ports`: a WebRTC call's ICE sockets are bound inside the range, and a full range is said plainly."""

from __future__ import annotations

import asyncio
import errno
import socket

import pytest
from aiortc import RTCPeerConnection

from omni_server.config import load_settings
from omni_server.transport.udp_ports import PortRangeEventLoop, loop_factory, parse_port_range


def _free_udp_ports(count: int) -> range:
    """`count` consecutive UDP ports on 127.0.0.1 that are free right now (searched upwards from 42000)."""
    for start in range(42000, 60000, count):
        socks = []
        try:
            for port in range(start, start + count):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return range(start, start + count)
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no free UDP port range")


async def _offer_candidate_ports() -> list[int]:
    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("audio")
        await pc.setLocalDescription(await pc.createOffer())  # gathers the host candidates
        lines = [line for line in pc.localDescription.sdp.splitlines() if line.startswith("a=candidate:")]
        return [int(line.split()[5]) for line in lines]
    finally:
        await pc.close()


def test_ice_candidates_use_ports_from_the_range(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two peer connections on a PortRangeEventLoop gather their candidates on ports of the range, one each."""
    monkeypatch.setattr("aioice.ice.get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    ports = _free_udp_ports(4)
    with asyncio.Runner(loop_factory=lambda: PortRangeEventLoop(ports)) as runner:
        first = runner.run(_offer_candidate_ports())
        second = runner.run(_offer_candidate_ports())
    assert first and second
    assert all(p in ports for p in first + second), (first, second, ports)


def test_a_full_range_is_an_error_naming_it() -> None:
    """When every port of the range is taken, binding fails with EADDRINUSE and the range in the message."""
    ports = _free_udp_ports(1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", ports[0]))

        async def bind() -> None:
            loop = asyncio.get_running_loop()
            await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))

        with asyncio.Runner(loop_factory=lambda: PortRangeEventLoop(ports)) as runner, pytest.raises(OSError) as e:
            runner.run(bind())
    assert e.value.errno == errno.EADDRINUSE and f"{ports[0]}-{ports[0]}" in str(e.value)


def test_setting_is_validated_and_optional() -> None:
    """No setting: the default loop; LOW-HIGH: a range; anything else is refused at start with the format."""
    assert loop_factory(load_settings([], {}).webrtc_ports) is None
    assert parse_port_range(load_settings(["--webrtc-ports", "50000-50100"], {}).webrtc_ports) == range(50000, 50101)
    for bad in ("50000", "50100-50000", "80-90", "a-b"):
        with pytest.raises(SystemExit, match="webrtc_ports"):
            load_settings(["--webrtc-ports", bad], {})
