"""The two ends of a p2pd UDP stream for benchmarks/udp_bench.py, one process each: the real StreamPort, UDPStream
and core on real sockets, with a receiver that counts bytes instead of writing a file (the benchmark measures
the stream, not the disk).

    python benchmarks/udp_stream_ends.py recv --port-file F [--bind 127.0.0.1] [--secret HEX]
    python benchmarks/udp_stream_ends.py send --to HOST:PORT --size BYTES [--secret HEX] [--bind 127.0.0.1]

Both print one JSON line when the stream ends: bytes, seconds, and the connection's counters. The receiver
learns the sender's address from its first datagram (the path validation of the core)."""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import reactor  # noqa: E402

from p2pd.core import udppackets, udpstream  # noqa: E402
from p2pd.peer.net.udp_port import UDPPort  # noqa: E402
from p2pd.peer.net.udp_socket import BatchPort  # noqa: E402
from p2pd.peer.net.udp_stream import StreamPort, UDPStream  # noqa: E402

CHUNK = 1 << 20


class Counter:
    """An IStreamReceiver that only counts what arrives."""

    preamble = b""

    def __init__(self, expect, on_done):
        self.got = 0
        self.expect = expect
        self.on_done = on_done
        self.first = None
        buf = memoryview(bytearray(CHUNK))
        counter = self

        class Opener:
            def space(self, at_least=0):
                return buf

            def filled(self, n):
                if counter.first is None:
                    counter.first = time.monotonic()
                counter.got += n
        self.opener = Opener()

    def stream_started(self, stream):
        pass

    def stream_arrived(self):
        if self.expect is not None and self.got >= self.expect:
            self.expect = None
            self.on_done()

    def stream_moving(self):
        pass

    def stream_lost(self, reason):
        self.on_done(reason.getErrorMessage())


class Source:
    """A push producer writing *size* bytes of one random MiB, over and over."""

    def __init__(self, stream, size):
        self.stream, self.left, self.paused = stream, size, False
        self.chunk = os.urandom(CHUNK)

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        while not self.paused and self.left > 0:
            n = min(self.left, CHUNK)
            self.stream.write(self.chunk[:n])
            self.left -= n
        if self.left <= 0 and not self.stream.closing:
            self.stream.close()

    def stopProducing(self):
        pass


def keys(secret, initiator):
    return udppackets.derive(b"benchmark exporter".ljust(32, b"\0"), secret, initiator)


def report(conn, port, got, seconds, error=None):
    stats = dict(conn.stats, resent=conn.send.resent, lost_bytes=conn.recovery.lost_bytes,
                 forged=conn.opener.forged, replayed=conn.opener.replayed, duplicate=conn.recv.duplicate,
                 srtt=conn.recovery.srtt, cc=conn.cc.state, port=dict(port.stats))
    print(json.dumps({"bytes": got, "seconds": seconds, "error": error, "stats": stats}), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=("send", "recv"))
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--to")
    parser.add_argument("--size", type=int, default=0)
    parser.add_argument("--port-file")
    parser.add_argument("--secret", default="00" * 16)
    parser.add_argument("--idle", type=float, default=10.0)
    args = parser.parse_args(argv)
    secret = bytes.fromhex(args.secret)
    udp = UDPPort()
    listening = BatchPort(0, udp, interface=args.bind, reactor=reactor)
    listening.startListening()
    port = StreamPort(reactor, udp)
    t0 = [None]
    reported = []
    if args.role == "recv":
        send, recv = keys(secret, False)
        conn = udpstream.Connection(send, recv, (args.bind, 9), reactor.seconds(), idle_timeout=args.idle)

        def done(error=None):
            if reported:
                return
            reported.append(True)
            seconds = time.monotonic() - (receiver.first or time.monotonic())
            report(conn, port, receiver.got, seconds, error)
            reactor.callLater(0.2, lambda: reactor.running and reactor.stop())
        receiver = Counter(args.size or None, done)
        with open(args.port_file + ".tmp", "w") as f:
            f.write(str(listening.getHost().port))
        os.rename(args.port_file + ".tmp", args.port_file)
    else:
        host, _, p = args.to.rpartition(":")
        send, recv = keys(secret, True)
        conn = udpstream.Connection(send, recv, (host, int(p)), reactor.seconds(), idle_timeout=args.idle)

        def done(error=None):
            report(conn, port, conn.send.acked_to, time.monotonic() - t0[0], error)
            reactor.callLater(0, lambda: reactor.running and reactor.stop())
        receiver = Counter(None, done)
    stream = UDPStream(port, conn, receiver, reactor)
    port.add(stream)
    if args.role == "send":
        source = Source(stream, args.size)
        stream.registerProducer(source, True)
        t0[0] = time.monotonic()
        reactor.callLater(0, source.resumeProducing)
    else:
        conn.owed.ping = False
    reactor.run()


if __name__ == "__main__":
    main()
