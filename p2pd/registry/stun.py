"""The registry's STUN responder, and the peers' client for it: Twisted adapters.

All protocol decisions live in :mod:`p2pd.core.stun`; this module moves datagrams,
keeps a per-source token bucket so the responder cannot be used to flood anyone, and
retransmits the client's request on a timer.  The reactor or clock is always passed in.
"""

from __future__ import annotations

import ipaddress
import os

from twisted.application.internet import UDPServer
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from p2pd.core.ratelimit import RateLimiter
from p2pd.core.stun import StunError, answer, binding_request, parse_binding_success, parse_message


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


class _BindingClient(DatagramProtocol):
    """One Binding transaction: send, retransmit on RFC 8489 timers, fire ``result``.

    Transmits ``retries + 1`` times, waiting 0.5 s after the first send and doubling
    each time (never more than ``timeout``), then ``timeout`` after the last before
    failing with :class:`TimeoutError`.  Datagrams from other sources or for other
    transactions are ignored; a malformed answer to ours fails with :class:`StunError`.
    """

    INITIAL_RTO = 0.5

    def __init__(self, clock, server: tuple[str, int], transaction_id: bytes, timeout: float, retries: int) -> None:
        self.result: Deferred[tuple[str, int]] = Deferred(lambda _: self._stop_timer())
        self._clock = clock
        self._server = server
        self._transaction_id = transaction_id
        self._request = binding_request(transaction_id)
        self._timeout = timeout
        self._sends_left = retries + 1
        self._rto = self.INITIAL_RTO
        self._timer = None

    def startProtocol(self) -> None:
        """Send the first request as soon as the socket is open."""
        self._transmit()

    def _transmit(self) -> None:
        """Send the request and arm the timer for the next send, or for giving up."""
        self._timer = None
        try:
            self.transport.write(self._request, self._server)
        except OSError as e:
            self._finish(Failure(e))
            return
        self._sends_left -= 1
        if self._sends_left:
            self._timer = self._clock.callLater(min(self._rto, self._timeout), self._transmit)
            self._rto *= 2
        else:
            self._timer = self._clock.callLater(self._timeout, self._give_up)

    def _give_up(self) -> None:
        """No answer after the last transmission."""
        self._timer = None
        host, port = self._server
        self._finish(Failure(TimeoutError(f"no STUN response from {host} port {port}")))

    def datagramReceived(self, data: bytes, addr) -> None:
        """Finish with the mapped address if this is the server's answer to our request."""
        if self.result.called or not _same_endpoint(addr, self._server):
            return
        try:
            if parse_message(data).transaction_id != self._transaction_id:
                return
        except StunError:
            return
        try:
            mapped = parse_binding_success(data, self._transaction_id)
        except StunError:
            self._finish(Failure())
        else:
            self._finish(mapped)

    def _finish(self, outcome) -> None:
        """Stop retransmitting and fire ``result`` (once)."""
        self._stop_timer()
        if self.result.called:
            return
        if isinstance(outcome, Failure):
            self.result.errback(outcome)
        else:
            self.result.callback(outcome)

    def _stop_timer(self) -> None:
        """Cancel the pending retransmission or give-up timer, if any."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


def _same_endpoint(addr, server: tuple[str, int]) -> bool:
    """Whether ``addr`` (2- or 4-tuple) is ``server``, however the IP is spelled."""
    try:
        same_ip = ipaddress.ip_address(addr[0]).packed == ipaddress.ip_address(server[0]).packed
    except ValueError:
        return False
    return same_ip and addr[1] == server[1]


def query(
    reactor, host: str, port: int, timeout: float = 2.0, retries: int = 3, *, interface: str | None = None
) -> Deferred[tuple[str, int]]:
    """Ask the STUN server at ``host`` (an IP address) and ``port`` for our public address.

    Opens an ephemeral UDP port on ``reactor`` (on ``interface``, by default every
    interface of ``host``'s family) for one Binding transaction with a random
    transaction id, and fires with the mapped ``(host, port)``; fails with
    :class:`TimeoutError` if no answer comes (see :class:`_BindingClient` for the
    timers) or :class:`StunError` for a bad one.  The port is closed before it fires.
    """
    try:
        version = ipaddress.ip_address(host).version
    except ValueError:
        return fail(StunError(f"{host!r} is not an IP address"))
    if interface is None:
        interface = "::" if version == 6 else ""
    client = _BindingClient(reactor, (host, port), os.urandom(12), timeout, retries)
    try:
        listening = reactor.listenUDP(0, client, interface=interface)
    except Exception:
        return fail()

    def close(outcome):
        return maybeDeferred(listening.stopListening).addBoth(lambda _: outcome)

    return client.result.addBoth(close)
