"""STUN Binding transactions (RFC 8489) sent from the daemon's own UDP socket.

The mapping a NAT gives is per socket: asking from a fresh throw-away port would learn a mapping nobody ever
reaches. So the client sends through the peer's one UDP port (:class:`p2pd.peer.net.udp_port.UDPPort`), which hands
it back every datagram whose first byte says STUN (RFC 7983). Several transactions may run at once; each is told
apart by its random transaction id and must be answered from the server it was sent to.

Timers: a request is transmitted ``retries + 1`` times, 0.5 s after the first send and doubling each time (never
more than ``timeout``), then ``timeout`` after the last before the query fails with :class:`TimeoutError`. A
malformed answer to ours fails it with :class:`~p2pd.core.stun.StunError`. All decisions on bytes are
:mod:`p2pd.core.stun`'s.
"""

from __future__ import annotations

import ipaddress
import os

from twisted.internet.defer import Deferred, fail
from twisted.python.failure import Failure

from p2pd.core.stun import StunError, binding_request, parse_binding_success, parse_message

INITIAL_RTO = 0.5


def same_endpoint(addr, server: tuple[str, int]) -> bool:
    """Whether ``addr`` (2- or 4-tuple) is ``server``, however the IP is spelled."""
    try:
        same_ip = ipaddress.ip_address(addr[0]).packed == ipaddress.ip_address(server[0]).packed
    except ValueError:
        return False
    return same_ip and addr[1] == server[1]


class _Transaction:
    """One Binding request: its retransmission timer and the Deferred of its outcome."""

    def __init__(self, client: StunClient, server: tuple[str, int], txid: bytes, timeout: float, retries: int):
        self.client = client
        self.server = server
        self.txid = txid
        self.request = binding_request(txid)
        self.timeout = timeout
        self.sends_left = retries + 1
        self.rto = INITIAL_RTO
        self.timer = None
        self.result: Deferred[tuple[str, int]] = Deferred(lambda _: self.finish(None))

    def transmit(self) -> None:
        self.timer = None
        try:
            self.client.send(self.request, self.server)
        except OSError as e:
            self.finish(Failure(e))
            return
        self.sends_left -= 1
        if self.sends_left:
            self.timer = self.client.clock.callLater(min(self.rto, self.timeout), self.transmit)
            self.rto *= 2
        else:
            self.timer = self.client.clock.callLater(self.timeout, self.give_up)

    def give_up(self) -> None:
        self.timer = None
        host, port = self.server
        self.finish(Failure(TimeoutError(f"no STUN response from {host} port {port}")))

    def finish(self, outcome) -> None:
        """Stop retransmitting, forget the transaction, and fire ``result`` with *outcome* (None: cancelled)."""
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        self.client.transactions.pop(self.txid, None)
        if outcome is None or self.result.called:
            return
        if isinstance(outcome, Failure):
            self.result.errback(outcome)
        else:
            self.result.callback(outcome)


class StunClient:
    """Binding queries through *send* (``send(datagram, (host, port))``, the UDP port's write), on *clock*.

    :meth:`datagram_received` is the UDP port's handler for STUN-class datagrams: answers to our transactions
    end them, anything else (strangers, other transactions, requests, garbage) is ignored and counted."""

    def __init__(self, clock, send, family=lambda: 4, random=os.urandom):
        self.clock = clock
        self.send = send
        self.family = family  # () -> the IP version (4 or 6) of the socket we send from
        self.random = random
        self.transactions: dict[bytes, _Transaction] = {}
        self.ignored = 0

    def query(self, host: str, port: int, timeout: float = 2.0, retries: int = 3) -> Deferred[tuple[str, int]]:
        """Deferred[(host, port)]: how the STUN server at *host* (an IP address) and *port* sees our socket."""
        try:
            version = ipaddress.ip_address(host).version
        except ValueError:
            return fail(StunError(f"{host!r} is not an IP address"))
        if version != self.family():
            return fail(StunError(f"our UDP socket is IPv{self.family()}; it cannot reach {host}"))
        transaction = _Transaction(self, (host, port), self.random(12), timeout, retries)
        self.transactions[transaction.txid] = transaction
        transaction.transmit()
        return transaction.result

    def datagram_received(self, data: bytes, addr) -> None:
        try:
            transaction = self.transactions.get(parse_message(data).transaction_id)
        except StunError:
            transaction = None
        if transaction is None or not same_endpoint(addr, transaction.server):
            self.ignored += 1
            return
        try:
            mapped = parse_binding_success(data, transaction.txid)
        except StunError:
            transaction.finish(Failure())
        else:
            transaction.finish(mapped)

    def stop(self) -> None:
        """Cancel every running query (the daemon is stopping)."""
        for transaction in list(self.transactions.values()):
            transaction.result.cancel()
