"""The sender's data path (SendSession over the TCP DataConnection) on real sockets, against a receiver that stops
reading or reads slowly. A private epoll reactor (never installed, never run: the test iterates it) drives a real
SendSession behind a real TCP listener on 127.0.0.1; the "receiver" is a plain socket the test controls."""

import os
import socket
import time

import pytest
from twisted.internet import protocol
from twisted.internet.epollreactor import EPollReactor

from p2pd.core import datastream
from p2pd.peer.files import sessions as tmod
from p2pd.peer.net.tcp_data import DataConnection

MB = 1 << 20


class Outgoing:
    """What a SendSession uses of its Outgoing transfer."""

    peer = "bob"

    def __init__(self, path):
        st = os.stat(path)
        self.items = [{"path": "f", "size": st.st_size}]
        self.local = [path]
        self.stats = [(st.st_size, st.st_mtime_ns)]
        self.digests = [b"\0" * 32]
        self.outcome = None

    def started_data(self):
        pass

    def progress(self, n):
        pass

    def complete(self, saved):
        self.outcome = self.outcome or ("complete", saved)

    def fail(self, error, resumable=False):
        self.outcome = self.outcome or ("failed", error)

    def interrupted(self, why):
        self.outcome = self.outcome or ("interrupted", why)


class Net:
    def __init__(self, tmp_path):
        self.reactor = EPollReactor()
        self.tmp_path = tmp_path
        self.conns, self.clients, self.ports = [], [], []

    def spin(self, until, timeout):
        end = time.monotonic() + timeout
        while not until() and time.monotonic() < end:
            self.reactor.runUntilCurrent()
            self.reactor.doIteration(0.005)
        return until()

    def sender(self, size):
        """A SendSession of one random file of *size* bytes behind a listener; ``(session, out, keys, port)``."""
        path = str(self.tmp_path / "f")
        with open(path, "wb") as f:
            f.write(os.urandom(size))
        out = Outgoing(path)
        secret = datastream.new_secret()
        session = tmod.SendSession(out, secret, [0], self.reactor)
        reactor = self.reactor
        conns = self.conns

        class Factory(protocol.Factory):
            def buildProtocol(self, addr):
                conn = DataConnection(session, reactor, dialer=False)
                conns.append(conn)
                return conn

        port = self.reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        self.ports.append(port)
        return session, out, datastream.SessionKeys(secret), port

    def dial(self, port, buffers=64 * 1024):
        """A receiver socket with small buffers on both ends (a slow or full link); the sender's DataConnection."""
        client = socket.socket()
        self.clients.append(client)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffers)
        client.connect(("127.0.0.1", port.getHost().port))
        client.setblocking(False)
        assert self.spin(lambda: self.conns, 5)
        conn = self.conns[-1]
        conn.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffers)
        return client, conn

    def close(self):
        for conn in self.conns:
            if not conn.closed:
                conn.transport.abortConnection()
        self.spin(lambda: all(c.closed for c in self.conns), 2)
        for port in self.ports:
            port.stopListening()
        self.spin(lambda: False, 0.05)
        for client in self.clients:
            client.close()
        r = self.reactor
        r.removeReader(r.waker)
        r.waker.connectionLost(None)
        r._poller.close()


@pytest.fixture
def net(tmp_path):
    world = Net(tmp_path)
    yield world
    world.close()


def test_a_receiver_that_fails_the_transfer_and_stops_reading_does_not_pin_the_connection(net, monkeypatch):
    """The receiver says 'fail' and stops reading while part of a record waits in the sender: the graceful close
    can never finish, so it is aborted after DATA_TIMEOUT (the connection, its fd and the session's buffers are
    not held for ever)."""
    monkeypatch.setattr(tmod, "DATA_TIMEOUT", 0.3)
    session, out, keys, port = net.sender(8 * MB)
    client, conn = net.dial(port)
    assert net.spin(lambda: conn.unsent, 5)  # the socket is full: part of a record waits
    client.sendall(datastream.Sealer(keys.to_sender).json({"t": "fail", "code": "no", "message": "stop"}))
    assert net.spin(lambda: out.outcome is not None, 5) and out.outcome[0] == "failed"
    # ten times the silence timeout later, the connection should be gone (aborted if it cannot be closed cleanly)
    assert net.spin(lambda: conn.closed, 3.0)


def test_a_sender_draining_a_slow_link_is_not_timed_out(net, monkeypatch):
    """A link slower than one record per DATA_TIMEOUT (about 35 KB/s with the real 30 s) still moves bytes all the
    time: every send the socket takes restarts the sender's silence timer, so it is not aborted as 'no data'."""
    monkeypatch.setattr(tmod, "DATA_TIMEOUT", 0.5)
    session, out, keys, port = net.sender(4 * MB)
    client, conn = net.dial(port)
    received, last_read, t0 = 0, 0.0, time.monotonic()
    while time.monotonic() - t0 < 2.5 and out.outcome is None:  # about 800 KB/s, steadily
        net.reactor.runUntilCurrent()
        net.reactor.doIteration(0.005)
        if time.monotonic() - last_read >= 0.02:
            last_read = time.monotonic()
            try:
                received += len(client.recv(16 * 1024))
            except BlockingIOError:
                pass
    assert received > 0
    assert out.outcome is None, out.outcome
