"""The registry's STUN responder: a Twisted adapter (the peers' client is :mod:`p2pd.peer.nat.stun_client`).

All protocol decisions live in :mod:`p2pd.core.stun`; this module moves datagrams and
keeps a per-source token bucket so the responder cannot be used to flood anyone.  The
reactor or clock is always passed in.
"""

from __future__ import annotations

from twisted.application.internet import UDPServer
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from p2pd.core.ratelimit import RateLimiter
from p2pd.core.stun import answer


class StunResponder(DatagramProtocol):
    """Answer STUN Binding requests, to their source address only, at a bounded rate.

    Counters: ``answered`` replies sent, ``dropped`` datagrams that were not requests we
    answer (or whose reply could not be sent), ``limited`` replies withheld because the
    source IP had used up its ``burst`` and ``rate`` (replies per second).  Only replies
    spend tokens, so garbage cannot lock a source out; at most ``max_sources`` source
    IPs are remembered, least recently seen forgotten first.
    """

    log = Logger()

    #: Drops are summarised in at most one debug event per this many seconds.
    LOG_INTERVAL = 10.0

    def __init__(self, clock, rate: float = 20, burst: float = 40, max_sources: int = 10_000) -> None:
        self.clock = clock
        self.limiter = RateLimiter(rate, burst, max_sources)
        self.answered = 0
        self.dropped = 0
        self.limited = 0
        self._quiet_until = float("-inf")

    def datagramReceived(self, data: bytes, addr) -> None:
        """Reply to a Binding request at ``addr`` (2- or 4-tuple, IPv4 or IPv6), else drop it."""
        host, port = addr[0], addr[1]
        reply = answer(data, host, port)
        if reply is None:
            self.dropped += 1
        elif self.limiter.check(host, self.clock.seconds()):
            self.limited += 1
        else:
            try:
                self.transport.write(reply, addr)
            except OSError:
                self.dropped += 1
            else:
                self.answered += 1
                return
        self._summarise()

    def _summarise(self) -> None:
        """Log the drop counters, at most once per LOG_INTERVAL, so floods stay out of the log."""
        now = self.clock.seconds()
        if now < self._quiet_until:
            return
        self._quiet_until = now + self.LOG_INTERVAL
        self.log.debug(
            "STUN: {dropped} datagrams dropped, {limited} replies rate-limited, {answered} answered",
            dropped=self.dropped,
            limited=self.limited,
            answered=self.answered,
        )


def makeStunService(port: int, interface: str, clock) -> UDPServer:
    """The registry's STUN listener as a service: UDP ``port`` on ``interface``."""
    return UDPServer(port, StunResponder(clock), interface=interface)
