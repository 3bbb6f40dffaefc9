"""The peer's one UDP socket. Every user of UDP (STUN now; the image/file stream and hole-punching probes next)
shares it, so the address a NAT maps for it is the one all of them use.

Datagrams are told apart by their first byte, as RFC 7983 does for STUN, DTLS and media on one port: a user
registers the range of first bytes it owns. STUN is 0-3 (a STUN message starts with two zero bits). Datagrams no
user claims are counted and dropped; nothing is ever answered to them.
"""

import errno

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

log = Logger()

STUN_BYTES = range(0, 4)


class UDPPort(DatagramProtocol):
    """``route(first_bytes, handler)`` gives ``handler(data, addr)`` the datagrams starting with one of
    *first_bytes*; ``send(data, addr)`` sends from this socket."""

    def __init__(self):
        self.routes = [None] * 256
        self.dropped = 0

    def route(self, first_bytes, handler) -> None:
        for b in first_bytes:
            if self.routes[b] is not None:
                raise ValueError("first byte %d is already routed" % b)
            self.routes[b] = handler

    def send(self, data: bytes, addr) -> None:
        """Send one datagram; OSError (no route, the socket is closed) is the caller's to handle."""
        if self.transport is None:
            raise OSError("the UDP port is not open")
        self.transport.write(data, addr)

    def send_batch(self, datagrams) -> list:
        """Send ``(datagram, addr)`` s (in as few system calls as the socket allows); what it cannot take now
        (``EAGAIN``, ``ENOBUFS``: its buffer is full) is returned, to go later. A datagram with no route is
        dropped."""
        if self.transport is None:
            return []
        batch = getattr(self.transport, "send_batch", None)
        if batch is not None:
            return batch(datagrams)
        for i, (data, addr) in enumerate(datagrams):
            try:
                self.transport.write(data, addr)
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.ENOBUFS, errno.EWOULDBLOCK):
                    return datagrams[i:]
        return []

    def family(self) -> int:
        """4 or 6: the IP version of the bound socket."""
        return 6 if ":" in self.transport.getHost().host else 4

    def datagramReceived(self, data: bytes, addr) -> None:
        handler = self.routes[data[0]] if data else None
        if handler is None:
            self.dropped += 1
            return
        try:
            handler(data, addr)
        except Exception:
            self.dropped += 1
            log.failure("handling a datagram from {addr} failed", addr=addr)
