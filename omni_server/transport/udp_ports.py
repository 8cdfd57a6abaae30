"""WebRTC's UDP ports: any the OS gives by default; `--webrtc-ports LOW-HIGH` keeps them in a range.

Each WebRTC call's media (audio, video and the data channel, bundled) uses one UDP socket per local
address ICE gathers on. aioice binds those sockets to port 0, so the OS picks each from its ephemeral
range (Linux: `/proc/sys/net/ipv4/ip_local_port_range`, usually 32768-60999), and neither aioice nor
aiortc has an option to choose. The one seam is the event loop's `create_datagram_endpoint`:
`PortRangeEventLoop` binds every datagram endpoint asked for port 0 to a free port of the range instead.
Only ICE asks for such endpoints in this process (mDNS binds 5353, DNS lookups run on threads).

A call needs one port of the range per address, so the range wants at least `--max-sessions` ports
(plus a few: a port is free again once its call has ended). When every port is taken, the call's
candidates cannot be gathered and it falls back (the page) or fails with `webrtc_failed` (API clients).

Must not import: torch, the engine, the session.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)


def parse_port_range(text: str) -> range:
    """`"50000-50100"` → `range(50000, 50101)` (the settings have checked the format)."""
    low, _, high = text.partition("-")
    return range(int(low), int(high) + 1)


class PortRangeEventLoop(asyncio.SelectorEventLoop):
    """An event loop whose datagram endpoints asked for "any port" get one from `ports`, round-robin."""

    def __init__(self, ports: range) -> None:
        super().__init__()
        self.ports = ports
        self._next = 0

    async def create_datagram_endpoint(
        self, protocol_factory: Any, local_addr: Any = None, remote_addr: Any = None, **kwargs: Any
    ) -> Any:
        if not _any_port(local_addr) or kwargs.get("sock") is not None:
            return await super().create_datagram_endpoint(protocol_factory, local_addr, remote_addr, **kwargs)
        host = local_addr[0]
        for _ in range(len(self.ports)):
            port = self.ports[self._next % len(self.ports)]
            self._next += 1
            try:
                return await super().create_datagram_endpoint(protocol_factory, (host, port), remote_addr, **kwargs)
            except OSError as e:
                if e.errno != errno.EADDRINUSE:
                    raise
        first, last = self.ports[0], self.ports[-1]
        logger.warning("every WebRTC UDP port %d-%d is in use on %s: widen --webrtc-ports", first, last, host)
        raise OSError(errno.EADDRINUSE, f"every UDP port in {first}-{last} is in use on {host}")


def _any_port(local_addr: Any) -> bool:
    return isinstance(local_addr, tuple) and len(local_addr) >= 2 and local_addr[1] == 0


def loop_factory(ports_text: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop factory `__main__` runs the server on: the default one, or one keeping to the range."""
    if not ports_text:
        return None
    ports = parse_port_range(ports_text)
    return lambda: PortRangeEventLoop(ports)
