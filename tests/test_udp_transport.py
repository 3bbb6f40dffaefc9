"""The UDP stream as a Twisted transport: TLS and the peer line protocol run over it between two daemons' UDP
sockets on loopback (what issue 16 needs when peers can reach each other only by UDP), with the real reactor."""

import os

import pytest_twisted
from twisted.internet import defer, protocol, reactor
from twisted.internet.interfaces import IConsumer, IPushProducer, ITransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface.verify import verifyObject

from p2pd.core import udppackets, udpstream
from p2pd.peer import identity as identity_mod
from p2pd.peer.links.link import PeerLink
from p2pd.peer.net.udp_port import UDPPort
from p2pd.peer.net.udp_stream import StreamPort
from p2pd.peer.net.udp_transport import StreamTransport


class Host:
    """The ILinkHost of one side: it trusts the key the other side's certificate proves (no registry here)."""

    def __init__(self, identity, expected_key):
        self.name = identity.name
        self.expected_key = expected_key
        self.up, self.frames = [], []
        self.udp_port = None

    def tls_peer_key(self, transport):
        return identity_mod.peer_key(transport, reactor.seconds())

    def verify_peer(self, name, key):
        return defer.succeed(None) if key == self.expected_key else defer.fail(ValueError("wrong key"))

    def link_up(self, link):
        self.up.append(link)

    def link_down(self, link):
        pass

    def link_frame(self, link, frame):
        self.frames.append(frame)


def ends(tmp_path):
    """Two StreamTransports on two UDP sockets of this process, keyed alike, not started."""
    ports = [UDPPort(), UDPPort()]
    listening = [reactor.listenUDP(0, p, interface="127.0.0.1") for p in ports]
    streams = [StreamPort(reactor, p) for p in ports]
    exporter, secret = os.urandom(32), os.urandom(16)
    keys = [udppackets.derive(exporter, secret, True), udppackets.derive(exporter, secret, False)]
    conns = [udpstream.Connection(keys[i][0], keys[i][1], ("127.0.0.1", listening[1 - i].getHost().port),
                                  reactor.seconds(), migrate=i == 1) for i in (0, 1)]
    return streams, conns, listening


@pytest_twisted.inlineCallbacks
def test_tls_and_the_line_protocol_over_the_stream(tmp_path):
    alice = identity_mod.load_or_create(str(tmp_path / "a"), "alice")
    bob = identity_mod.load_or_create(str(tmp_path / "b"), "bob")
    streams, conns, listening = ends(tmp_path)
    hosts = [Host(alice, bob.public_text), Host(bob, alice.public_text)]
    links = []

    def link_for(i, expected):
        def build():
            link = PeerLink(hosts[i], reactor, expected=expected)
            links.append(link)
            return link
        return protocol.Factory.forProtocol(build)
    client = TLSMemoryBIOFactory(identity_mod.client_tls_options(alice), True,
                                 link_for(0, ("bob", bob.public_text))).buildProtocol(None)
    server = TLSMemoryBIOFactory(identity_mod.server_tls_options(bob), False, link_for(1, None)).buildProtocol(None)
    transports = [StreamTransport(streams[0], conns[0], client, reactor),
                  StreamTransport(streams[1], conns[1], server, reactor)]
    for t in transports:
        verifyObject(ITransport, t)
        verifyObject(IConsumer, t)
        verifyObject(IPushProducer, t)
        t.start()
    try:
        ready = yield defer.DeferredList([link.when_ready for link in links], fireOnOneErrback=True)
        assert all(ok for ok, _ in ready)
        a_link = next(link for link in links if link.outgoing)
        b_link = next(link for link in links if not link.outgoing)
        assert a_link.peer == "bob" and b_link.peer == "alice"
        label = udppackets.EXPORTER_LABEL
        assert a_link.keying_material(label, 32) == b_link.keying_material(label, 32)  # what keys transfers
        bodies = [("%02d" % n) * 7500 for n in range(20)]  # 300 KB of 15 KB messages through TLS
        for n in range(200):
            a_link.send({"t": "ping", "n": n})
        for n, body in enumerate(bodies):
            a_link.send({"t": "msg", "id": "%032x" % n, "from": "alice", "seq": n + 1, "ts": 1, "body": body})
        deadline = reactor.seconds() + 10
        while len(hosts[1].frames) < len(bodies) and reactor.seconds() < deadline:
            d = defer.Deferred()
            reactor.callLater(0.01, d.callback, None)
            yield d
        assert [f.get("body") for f in hosts[1].frames] == bodies
        assert transports[1].getPeer().port == listening[0].getHost().port
    finally:
        for t in transports:
            t.abortConnection()
        for port in listening:
            yield port.stopListening()
