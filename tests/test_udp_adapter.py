"""The reactor side of the UDP stream (p2pd.peer.net.udp_stream) on Twisted's fakes, and the batched UDP socket
(p2pd.peer.net.udp_socket) on real loopback sockets.

The fakes: one ``twisted.internet.task.Clock`` is the reactor of two daemons, each with a real
:class:`~p2pd.peer.net.udp_port.UDPPort` and :class:`~p2pd.peer.net.udp_stream.StreamPort` on a
``FakeDatagramTransport`` that records what it writes and, through the Clock, hands it to the port at the
address it was sent to, ``LATENCY`` later. Streams are opened as the daemon opens them
(:class:`~p2pd.peer.net.udp_stream.UDPDataPaths` with a fake link) and carry real datastream records."""

import errno
import functools
import os
import select
import socket
import struct

import pytest
from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import FakeDatagramTransport, MemoryReactorClock
from twisted.logger import globalLogPublisher
from zope.interface import implementer
from zope.interface.verify import verifyObject

from p2pd.core import datastream, udppackets, udpstream
from p2pd.peer.interfaces import IByteStream, IDataPaths, IStreamReceiver
from p2pd.peer.net import udp_socket
from p2pd.peer.net.udp_port import UDPPort
from p2pd.peer.net.udp_socket import BatchPort
from p2pd.peer.net.udp_stream import BACKPRESSURE_RETRY, ChosenPaths, StreamPort, UDPDataPaths
from tests.test_tcp_data import Producer

KEYS = datastream.SessionKeys(b"\x05" * 32)
ALICE, BOB = ("10.0.0.1", 4000), ("10.0.0.2", 5000)
LATENCY = 0.002
PAYLOAD = os.urandom(600_000)


@implementer(IStreamReceiver)
class Receiver:
    """A session's receiving end as far as the path sees it: records opened as they arrive."""

    preamble = b""

    def __init__(self, key):
        self.opener = datastream.Opener(key)
        self.streams, self.records, self.lost = [], [], []
        self.arrivals = self.moving = 0

    def stream_started(self, stream):
        self.streams.append(stream)

    def stream_arrived(self):
        self.arrivals += 1
        self.records.extend((kind, bytes(payload) if kind == datastream.DATA else payload)
                            for kind, payload in self.opener.records())

    def stream_moving(self):
        self.moving += 1

    def stream_lost(self, reason):
        self.lost.append(reason)

    def data(self):
        return b"".join(p for kind, p in self.records if kind == datastream.DATA)


class Wire(FakeDatagramTransport):
    """A daemon's UDP socket: records each datagram written and delivers it (unless ``cut``) to the port bound
    at its address, ``LATENCY`` later. ``room``: None, or how many more datagrams the socket takes before
    ``EAGAIN`` (its buffer is full)."""

    def __init__(self, net, addr):
        super().__init__()
        self.net, self.addr = net, addr
        self.cut = False
        self.room = None
        self.refused = 0

    def write(self, packet, addr=FakeDatagramTransport.noAddr):
        if self.room is not None:
            if self.room <= 0:
                self.refused += 1
                raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
            self.room -= 1
        super().write(packet, addr)
        port = self.net.ports.get(addr)
        if port is not None and not self.cut:
            self.net.clock.callLater(LATENCY, port.datagramReceived, packet, self.addr)


class Link:
    """What UDPDataPaths reads of a TLS link: who dialled, the peer's UDP port and host, the TLS exporter."""

    def __init__(self, outgoing, peer, udp=True):
        self.outgoing = outgoing
        self.peer = "bob" if outgoing else "alice"
        self.peer_udp_port = peer[1] if udp else None
        self._host = peer[0]

    def keying_material(self, label, size):
        assert label == udppackets.EXPORTER_LABEL
        return b"\x42" * size

    def peer_address(self):
        return IPv4Address("TCP", self._host, 40000)


class Side:
    def __init__(self, net, addr, idle_timeout):
        self.udp = UDPPort()
        self.wire = Wire(net, addr)
        self.udp.makeConnection(self.wire)
        self.port = StreamPort(net.clock, self.udp)
        self.paths = UDPDataPaths(net.clock, self.port, idle_timeout=idle_timeout)
        net.ports[addr] = self.udp


class End:
    """One end of an open stream: its side, receiver, stream and connection."""

    def __init__(self, side, receiver):
        self.side, self.receiver = side, receiver
        (self.stream,) = receiver.streams
        self.conn = self.stream.conn

    def timers(self, clock):
        return [c for c in clock.getDelayedCalls() if c.func == self.stream._fire]


class Net:
    def __init__(self, idle_timeout=udpstream.IDLE_TIMEOUT):
        self.clock = Clock()
        self.ports = {}
        self.alice = Side(self, ALICE, idle_timeout)
        self.bob = Side(self, BOB, idle_timeout)

    def open(self, sid=KEYS.sid):
        """A stream from alice (the sender, who dialled the link) to bob, opened at both ends."""
        a, b = Receiver(KEYS.to_sender), Receiver(KEYS.to_receiver)
        self.alice.paths.open(Link(True, BOB), sid, a)
        self.bob.paths.open(Link(False, ALICE), sid, b)
        return End(self.alice, a), End(self.bob, b)

    def run(self, until, limit=30.0, check=None):
        """Advance the Clock from one delayed call to the next until ``until()`` (or *limit* more seconds)."""
        end = self.clock.seconds() + limit
        for _ in range(1_000_000):
            if until():
                return True
            calls = self.clock.getDelayedCalls()
            if not calls:
                return until()
            when = min(c.getTime() for c in calls)
            if when > end:
                self.clock.advance(end - self.clock.seconds())
                return until()
            self.clock.advance(max(when - self.clock.seconds(), 0.0))
            if check is not None:
                check()
        raise AssertionError("the Clock never went quiet")

    def settle(self, a, b):
        """Run until both ends heard each other (the opening pings) and nothing is due at once."""
        assert self.run(lambda: a.conn.stats["received"] and b.conn.stats["received"])


def records(sealer, data, chunk=64 << 10):
    out = [sealer.json({"t": "file", "i": 0})]
    out += [b"".join(sealer.data(data[i:i + chunk])) for i in range(0, len(data), chunk)]
    return out + [sealer.end(0), sealer.finish()]


def expected(data):
    return [(datastream.JSON, {"t": "file", "i": 0}), *[(datastream.DATA, data[i:i + (64 << 10)])
                                                        for i in range(0, len(data), 64 << 10)],
            (datastream.END, 0), (datastream.FINISH, None)]


def send(end, data=PAYLOAD):
    for record in records(datastream.Sealer(KEYS.to_receiver), data):
        end.stream.write(record)


def packet_numbers(wire):
    return [struct.unpack(">Q", d[9:17])[0] for d, _ in wire.written if d[0] == udppackets.FIRST_BYTE]


@pytest.fixture
def net():
    return Net()


@pytest.fixture
def small_window(monkeypatch):
    """Connections with a 64 KiB window (credit and send limit), opened through the same UDPDataPaths."""
    window = 64 << 10
    monkeypatch.setattr(udpstream, "Connection", functools.partial(udpstream.Connection, window=window))
    return window


# --- the adapter -------------------------------------------------------------------------------------------------

def test_the_stream_is_a_byte_stream_and_the_paths_are_data_paths(net):
    a, b = net.open()
    assert verifyObject(IByteStream, a.stream) and verifyObject(IByteStream, b.stream)
    assert verifyObject(IStreamReceiver, a.receiver)
    assert verifyObject(IDataPaths, net.alice.paths)
    assert verifyObject(IDataPaths, ChosenPaths(tcp=net.bob.paths, udp=net.alice.paths))
    assert not a.stream.closed and a.conn.opener.cid in net.alice.port.streams


def test_bytes_written_at_one_end_reach_the_other_receiver_whole_and_in_order(net):
    a, b = net.open()
    send(a)
    a.stream.write(b"")  # an empty write is harmless
    reply = datastream.Sealer(KEYS.to_sender)
    b.stream.write(reply.json({"t": "status", "have": len(PAYLOAD)}))
    assert net.run(lambda: len(b.receiver.records) == len(expected(PAYLOAD)) and a.receiver.records)
    assert b.receiver.records == expected(PAYLOAD)
    assert a.receiver.records == [(datastream.JSON, {"t": "status", "have": len(PAYLOAD)})]
    assert a.receiver.moving > 0  # the peer's ACKs moved our bytes
    assert not a.receiver.lost and not b.receiver.lost


def test_many_writes_go_out_in_one_flush_when_the_clock_turns(net, monkeypatch):
    a, b = net.open()
    net.settle(a, b)
    flushes = []
    real = a.conn.datagrams_to_send
    monkeypatch.setattr(a.conn, "datagrams_to_send", lambda now: flushes.append(now) or real(now))
    written = len(a.side.wire.written)
    sealer = datastream.Sealer(KEYS.to_receiver)
    for i in range(50):
        a.stream.write(sealer.json({"n": i, "pad": "x" * 400}))
    assert len(a.side.wire.written) == written and flushes == []  # nothing went out per write
    pending = [c for c in net.clock.getDelayedCalls() if c.func == a.side.port.flush]
    assert len(pending) == 1 and pending[0].getTime() == net.clock.seconds()
    net.clock.advance(0)
    assert len(flushes) == 1
    assert len(a.side.wire.written) - written >= 2  # that one flush sent several datagrams
    assert net.run(lambda: len(b.receiver.records) == 50)
    assert [payload["n"] for _, payload in b.receiver.records] == list(range(50))


def test_each_stream_has_one_timer_rearmed_to_the_cores(net):
    a, b = net.open()
    seen = []

    def check():
        for end in (a, b):
            timers = end.timers(net.clock)
            assert len(timers) <= 1
            if timers:
                assert timers == [end.stream.timer]
            seen.append(len(timers))
    send(a)
    assert net.run(lambda: len(b.receiver.records) == len(expected(PAYLOAD)), check=check)
    assert seen.count(1) > len(seen) // 2  # the streams did have their timer most of the time
    net.run(lambda: False, limit=0.05)
    timer = a.stream.timer
    assert timer is not None and timer.active()
    assert timer.getTime() == pytest.approx(max(a.conn.get_timer(), net.clock.seconds()))
    a.stream.write(datastream.Sealer(KEYS.to_receiver).json({"more": 1}))
    net.clock.advance(0)  # flushed: the same timer, moved to the core's new deadline
    assert a.stream.timer is timer and timer.active() and a.timers(net.clock) == [timer]
    assert timer.getTime() == pytest.approx(max(a.conn.get_timer(), net.clock.seconds()))


def test_a_datagram_for_no_connection_is_counted_and_never_answered(net):
    a, b = net.open()
    net.settle(a, b)
    net.run(lambda: False, limit=0.1)
    written = len(net.bob.wire.written)
    calls = len(net.clock.getDelayedCalls())
    stranger = ("203.0.113.9", 9999)
    net.bob.udp.datagramReceived(bytes([udppackets.FIRST_BYTE]) + os.urandom(8) + os.urandom(60), stranger)
    net.bob.udp.datagramReceived(bytes([udppackets.FIRST_BYTE]) + b"short", stranger)
    assert net.bob.port.stats["unknown"] == 2
    assert len(net.clock.getDelayedCalls()) == calls  # nothing was scheduled for them
    net.clock.advance(0)
    assert len(net.bob.wire.written) == written
    assert b.conn.opener.forged == 0 and b.conn.stats["received"] > 0


@pytest.mark.parametrize("how", ["write", "send_batch"])
def test_datagrams_the_socket_refuses_wait_and_go_soon_none_lost(net, how):
    """EAGAIN is local backpressure: what the socket refused is kept, retried within BACKPRESSURE_RETRY, and
    goes in order before anything newer; every packet number the core sealed is sent exactly once."""
    a, b = net.open()
    net.settle(a, b)
    wire = a.side.wire
    if how == "send_batch":  # a socket that sends in batches returns what it could not take
        takes = [3]

        def send_batch(datagrams):
            n = takes.pop(0) if takes else len(datagrams)
            for data, addr in datagrams[:n]:
                wire.write(data, addr)
            return datagrams[n:]
        wire.send_batch = send_batch
    else:
        wire.room = 3
    send(a)
    net.clock.advance(0)
    unsent = list(a.stream.unsent)
    assert unsent and a.side.port.stats["backpressure"] == 1
    timer = a.stream.timer
    assert timer.active() and timer.getTime() - net.clock.seconds() <= BACKPRESSURE_RETRY + 1e-9
    wire.room = None
    before = len(wire.written)
    net.clock.advance(BACKPRESSURE_RETRY)
    assert wire.written[before:before + len(unsent)] == unsent  # the refused ones first, as they were
    assert net.run(lambda: len(b.receiver.records) == len(expected(PAYLOAD)))
    assert b.receiver.records == expected(PAYLOAD)
    pns = packet_numbers(wire)
    assert pns == list(range(len(pns)))  # nothing dropped, nothing out of order, nothing sent twice
    assert a.conn.stats["lost_packets"] == 0 and a.conn.send.resent == 0


def test_pause_receiving_holds_the_bytes_and_the_sender_by_credit(net, small_window):
    a, b = net.open()
    net.settle(a, b)
    b.stream.pauseReceiving()
    send(a)
    net.run(lambda: False, limit=5.0)  # longer than a third of the idle timeout: pings kept both alive
    assert b.receiver.records == [] and b.receiver.arrivals == 0
    assert a.conn.send.next <= small_window  # held by the credit it was given
    assert b.conn.recv.ready_bytes <= small_window
    assert not a.receiver.lost and not b.receiver.lost
    b.stream.resumeReceiving()
    assert b.receiver.records  # what waited is handed up at once
    assert net.run(lambda: len(b.receiver.records) == len(expected(PAYLOAD)))
    assert b.receiver.records == expected(PAYLOAD)


def test_a_producer_is_paused_while_the_send_buffer_is_full_and_resumed_when_it_drains(net, small_window):
    a, b = net.open()
    net.settle(a, b)
    producer = Producer()
    a.stream.registerProducer(producer, True)
    sealer = datastream.Sealer(KEYS.to_receiver)
    a.stream.write(b"".join(sealer.data(PAYLOAD[:40_000])))
    assert producer.calls == []
    a.stream.write(b"".join(sealer.data(PAYLOAD[40_000:100_000])))
    assert producer.calls == ["pause"]
    a.stream.write(sealer.end(0))  # written while paused: queued, not paused twice
    assert producer.calls == ["pause"]
    assert net.run(lambda: producer.calls == ["pause", "resume"])
    assert a.conn.send.unacked < small_window // 2
    assert net.run(lambda: len(b.receiver.records) == 3)
    assert b.receiver.data() == PAYLOAD[:100_000]
    a.stream.unregisterProducer()
    a.stream.write(b"".join(sealer.data(PAYLOAD[:100_000])))
    assert producer.calls == ["pause", "resume"]


def test_a_graceful_close_ends_both_ends_with_connection_done_and_the_ports_forget_them(net):
    a, b = net.open()
    send(a)
    a.stream.close()
    a.stream.write(b"late")  # nothing written after close is sent
    assert net.run(lambda: a.receiver.lost and b.receiver.lost)
    assert b.receiver.records == expected(PAYLOAD)  # everything arrived before the end
    assert b.receiver.opener.buffered == 0
    assert len(a.receiver.lost) == 1 and a.receiver.lost[0].check(error.ConnectionDone)
    assert len(b.receiver.lost) == 1 and b.receiver.lost[0].check(error.ConnectionDone)
    assert a.stream.closed and b.stream.closed
    assert net.run(lambda: not net.alice.port.streams and not net.bob.port.streams, limit=5)
    assert a.timers(net.clock) == [] and b.timers(net.clock) == []
    assert net.alice.port.counters()["open"] == 0 and net.bob.port.counters()["open"] == 0


def test_an_abort_is_connection_lost_at_the_peer(net):
    a, b = net.open()
    send(a)
    net.clock.advance(0)
    a.stream.close(abort=True)
    assert len(a.receiver.lost) == 1 and a.receiver.lost[0].check(error.ConnectionLost)
    assert net.run(lambda: b.receiver.lost)
    assert len(b.receiver.lost) == 1 and b.receiver.lost[0].check(error.ConnectionLost)
    message = b.receiver.lost[0].getErrorMessage()
    assert "closed by the peer" in message and "the transfer was stopped" in message
    assert net.run(lambda: not net.alice.port.streams and not net.bob.port.streams, limit=5)


def test_the_idle_timeout_fails_a_stream_whose_peer_went_silent():
    net = Net(idle_timeout=2.0)
    a, b = net.open()
    net.settle(a, b)
    net.bob.wire.cut = True  # bob's datagrams no longer reach alice
    started = net.clock.seconds()
    assert net.run(lambda: a.receiver.lost, limit=10)
    assert net.clock.seconds() - started == pytest.approx(2.0, abs=0.1)
    (reason,) = a.receiver.lost
    assert reason.check(error.ConnectionLost) and "silent" in reason.getErrorMessage()
    assert a.stream.closed
    assert net.alice.port.streams == {} and a.timers(net.clock) == []
    assert net.alice.port.counters()["open"] == 0
    assert net.run(lambda: b.receiver.lost, limit=10)  # alice is gone: bob times out in turn
    assert b.receiver.lost[0].check(error.ConnectionLost) and net.bob.port.streams == {}


def test_counters_sum_what_open_and_closed_streams_dropped(net):
    a, b = net.open()
    net.settle(a, b)
    genuine = net.alice.wire.written[0][0]
    net.bob.udp.datagramReceived(genuine, ALICE)  # a replay
    forged = genuine[:-1] + bytes([genuine[-1] ^ 1])
    net.bob.udp.datagramReceived(forged, ALICE)
    counters = net.bob.port.counters()
    assert (counters["forged"], counters["replayed"], counters["open"]) == (1, 1, 1)
    a.stream.close()
    assert net.run(lambda: not net.bob.port.streams, limit=5)
    counters = net.bob.port.counters()
    assert (counters["forged"], counters["replayed"], counters["open"]) == (1, 1, 0)
    c, d = net.open(sid=b"\x09" * 16)
    net.settle(c, d)
    assert d.conn.opener.cid != b.conn.opener.cid
    second = net.alice.wire.written[-1][0]
    net.bob.udp.datagramReceived(second[:-1] + bytes([second[-1] ^ 1]), ALICE)
    net.bob.udp.datagramReceived(second[:-1] + bytes([second[-1] ^ 2]), ALICE)
    counters = net.bob.port.counters()
    assert (counters["forged"], counters["replayed"], counters["open"]) == (3, 1, 1)
    assert net.bob.port.stats["unknown"] == 0  # they were all routed to their stream, which dropped them
    assert d.receiver.records == [] and not d.receiver.lost


def test_udp_paths_need_the_peers_udp_port_and_chosen_paths_route_by_transport(net):
    receiver = Receiver(KEYS.to_sender)
    failed = net.alice.paths.open(Link(True, BOB, udp=False), KEYS.sid, receiver)
    failure = []
    failed.addErrback(failure.append)
    assert failure and failure[0].check(error.ConnectError)
    assert receiver.streams == [] and net.alice.port.streams == {}

    class TCP:
        def __init__(self):
            self.opened, self.forgotten = [], []

        def open(self, link, session_id, receiver, transport="tcp"):
            self.opened.append(session_id)

        def forget(self, session_id):
            self.forgotten.append(session_id)
    tcp = TCP()
    chosen = ChosenPaths(tcp=tcp, udp=net.alice.paths)
    chosen.open(Link(True, BOB), b"\x01" * 16, Receiver(KEYS.to_sender), "tcp")
    assert tcp.opened == [b"\x01" * 16] and net.alice.port.streams == {}
    chosen.open(Link(True, BOB), KEYS.sid, receiver, "udp")
    assert tcp.opened == [b"\x01" * 16] and len(receiver.streams) == 1 and len(net.alice.port.streams) == 1
    chosen.forget(KEYS.sid)
    assert tcp.forgotten == [KEYS.sid]


# --- the batched socket ------------------------------------------------------------------------------------------

def _kernel_has(option):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(udp_socket.SOL_UDP, option, 1 if option == udp_socket.UDP_GRO else 1200)
        return True
    except OSError:
        return False
    finally:
        s.close()


needs_gso = pytest.mark.skipif(not _kernel_has(udp_socket.UDP_SEGMENT), reason="no UDP_SEGMENT in this kernel")
needs_gro = pytest.mark.skipif(not _kernel_has(udp_socket.UDP_GRO), reason="no UDP_GRO in this kernel")


class Recorder(DatagramProtocol):
    def __init__(self):
        self.got = []

    def datagramReceived(self, data, addr):
        self.got.append((data, addr))


class SpySocket:
    """Stands in for a socket (a real socket's methods cannot be replaced): counts sendmsg/sendto, may make the
    next sendmsg calls fail, and passes everything else through."""

    def __init__(self, sock, fail=()):
        self.sock = sock
        self.fail = list(fail)  # errno values the next sendmsg calls raise, one each
        self.calls = []

    def sendmsg(self, buffers, ancillary, flags, addr):
        self.calls.append(("sendmsg", sum(len(b) for b in buffers)))
        if self.fail:
            code = self.fail.pop(0)
            raise OSError(code, os.strerror(code))
        return self.sock.sendmsg(buffers, ancillary, flags, addr)

    def sendto(self, data, addr):
        self.calls.append(("sendto", len(data)))
        return self.sock.sendto(data, addr)

    def __getattr__(self, name):
        return getattr(self.sock, name)


@pytest.fixture
def batch_port():
    """A listening BatchPort on 127.0.0.1 (on a memory reactor: the test reads it itself) and a plain socket."""
    recorder = Recorder()
    reactor = MemoryReactorClock()
    port = BatchPort(0, recorder, interface="127.0.0.1", reactor=reactor)
    port.startListening()
    plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    plain.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    plain.bind(("127.0.0.1", 0))
    plain.settimeout(2)
    yield port, recorder, plain
    port.socket = getattr(port.socket, "sock", port.socket)
    port.stopListening()
    reactor.advance(0)  # where the port closes its socket
    plain.close()


def batch(count=100, size=1200, last=333):
    out = [bytes([i % 251]) * size for i in range(count)]
    return out + [b"\xee" * last]


def receive(sock, n):
    got = []
    for _ in range(n):
        got.append(sock.recv(65536))
    sock.settimeout(0.05)
    with pytest.raises(socket.timeout):
        sock.recv(65536)  # and nothing more
    return got


@needs_gso
def test_a_gso_batch_arrives_complete_and_in_order(batch_port):
    port, _, plain = batch_port
    assert port.gso
    spy = port.socket = SpySocket(port.socket)
    data = batch()
    to = plain.getsockname()
    assert port.send_batch([(d, to) for d in data]) == []
    assert receive(plain, len(data)) == data
    kinds = [kind for kind, _ in spy.calls]
    assert kinds == ["sendmsg", "sendmsg"]  # 54 + 47 segments, each call under MAX_GSO_BYTES
    assert all(size <= udp_socket.MAX_GSO_BYTES for _, size in spy.calls) and port.gso


def test_without_gso_datagrams_go_one_by_one_and_all_arrive(batch_port):
    port, _, plain = batch_port
    port.gso = False
    spy = port.socket = SpySocket(port.socket)
    data = batch()
    assert port.send_batch([(d, plain.getsockname()) for d in data]) == []
    assert receive(plain, len(data)) == data
    assert [kind for kind, _ in spy.calls] == ["sendto"] * len(data)


@needs_gso
def test_only_what_one_gso_send_can_carry_is_grouped(batch_port):
    """A segment is cut at the first datagram's size: a longer one, or one to another address, starts a new
    send. Each datagram arrives as it was written, in order, at its own address."""
    port, _, plain = batch_port
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", 0))
    other.settimeout(2)
    spy = port.socket = SpySocket(port.socket)
    one, two = plain.getsockname(), other.getsockname()
    sizes = [(1000, one), (1000, one), (1200, one), (1200, one), (700, one), (1200, one), (1200, two),
             (1200, two), (1300, two), (90, two), (1200, one)]
    datagrams = [(bytes([i]) * size, to) for i, (size, to) in enumerate(sizes)]
    try:
        assert port.send_batch(datagrams) == []
        assert receive(plain, 7) == [d for d, to in datagrams if to == one]
        assert receive(other, 4) == [d for d, to in datagrams if to == two]
    finally:
        other.close()
    # [1000, 1000] [1200, 1200, 700] [1200] | [1200, 1200] [1300, 90] | [1200]
    assert [(kind, size) for kind, size in spy.calls] == [
        ("sendmsg", 2000), ("sendmsg", 3100), ("sendto", 1200), ("sendmsg", 2400), ("sendmsg", 1390),
        ("sendto", 1200)]


@needs_gso
def test_an_eio_from_a_gso_send_falls_back_to_one_by_one_and_loses_nothing(batch_port):
    port, _, plain = batch_port
    spy = port.socket = SpySocket(port.socket, fail=[errno.EIO])
    data = batch()
    assert port.send_batch([(d, plain.getsockname()) for d in data]) == []
    assert receive(plain, len(data)) == data
    kinds = [kind for kind, _ in spy.calls]
    assert kinds == ["sendmsg"] + ["sendto"] * len(data) and not port.gso
    assert port.send_batch([(b"after", plain.getsockname())]) == [] and spy.calls[-1][0] == "sendto"
    assert receive(plain, 1) == [b"after"]


@needs_gso
def test_a_full_socket_buffer_returns_what_was_not_sent(batch_port):
    port, _, plain = batch_port
    spy = port.socket = SpySocket(port.socket)
    data = batch()
    datagrams = [(d, plain.getsockname()) for d in data]
    spy.fail = []
    real = spy.sendmsg

    def second_full(buffers, ancillary, flags, addr):
        if len(spy.calls) == 1:
            spy.calls.append(("sendmsg", 0))
            raise OSError(errno.EAGAIN, "full")
        return real(buffers, ancillary, flags, addr)
    spy.sendmsg = second_full
    unsent = port.send_batch(datagrams)
    assert unsent == datagrams[54:] and port.gso  # backpressure, not a reason to give up GSO
    assert receive(plain, 54) == data[:54]


@needs_gro
def test_a_gro_read_hands_each_datagram_to_the_protocol_separately(batch_port):
    port, recorder, plain = batch_port
    assert port.gro
    data = batch(count=30)
    to = ("127.0.0.1", port.getHost().port)
    sent = plain.sendmsg([b"".join(data)], [(udp_socket.SOL_UDP, udp_socket.UDP_SEGMENT,
                                             struct.pack("=H", 1200))], 0, to)
    assert sent == sum(map(len, data))
    plain.sendto(b"alone", to)
    reads = []
    real = port.socket

    class Counting(SpySocket):
        def recvmsg_into(self, buffers, space):
            result = self.sock.recvmsg_into(buffers, space)
            reads.append(result[0])
            return result
    port.socket = Counting(real)
    assert select.select([real], [], [], 2)[0]
    port.doRead()
    port.socket = real
    me = plain.getsockname()
    assert recorder.got == [(d, me) for d in data] + [(b"alone", me)]
    assert len(reads) < len(data)  # the kernel handed over several at once, and doRead cut them apart


@needs_gro
def test_an_empty_datagram_on_the_gro_path_is_dropped_like_any_other_not_logged_as_a_failure(batch_port):
    """Anyone may send a 0-byte datagram. Without GRO, Twisted hands it up and the UDPPort counts and drops
    it; the GRO read cut it with ``range(0, 0, 0)``, a ValueError logged with its traceback for every one."""
    port, recorder, plain = batch_port
    udp = UDPPort()
    port.protocol = udp
    failures = []
    observer = lambda event: event.get("log_failure") and failures.append(event)  # noqa: E731
    globalLogPublisher.addObserver(observer)
    try:
        to = ("127.0.0.1", port.getHost().port)
        plain.sendto(b"", to)
        plain.sendto(b"\x99junk", to)
        assert select.select([port.socket], [], [], 2)[0]
        port.doRead()
    finally:
        globalLogPublisher.removeObserver(observer)
        port.protocol = recorder
    assert failures == []
    assert udp.dropped == 2
