"""The two ends of a p2pd UDP stream for benchmarks/udp_bench.py, one process each: the real StreamPort, UDPStream
and core on real sockets (a BatchPort: GSO/GRO), with a receiver that counts bytes instead of writing a file (the
benchmark measures the stream, not the disk).

    python benchmarks/udp_stream_ends.py recv [--port-file F] [--bind 127.0.0.1] [--secret HEX] [--idle 10]
    python benchmarks/udp_stream_ends.py send (--port P | --to HOST:PORT) --size BYTES [--secret HEX] [--bind ...]

The receiver prints ``{"port": P}`` once it listens (and writes P to ``--port-file``, if given). Each end prints one
JSON line when the stream ends, or on SIGTERM with what it has so far: ``bytes`` (the receiver: what arrived in
order; the sender: what the peer acknowledged), ``seconds`` (the receiver: first byte to last; the sender: from its
first write to the end), ``complete`` (the whole stream, its end included, arrived / was acknowledged), ``error``,
the stream's counters (``resent``: stream bytes sent more than once; ``lost_bytes``, ``lost_packets``: what it
declared lost, datagram bytes; ``ptos``: probe timeouts; ``forged``, ``replayed``: datagrams dropped as not
authentic or seen before; ``duplicate``: stream bytes that arrived more than once), ``stats`` (the connection's
and the port's counters, the RTT and the congestion controller's state) and ``hwm_mb``, the process's peak
resident memory (``VmHWM``, MB = 10^6 bytes). The sender writes from one buffer of random bytes, a view of it
each time, so the stream copies every chunk as it does a file's records.

The receiver learns the sender's address from its first authentic datagram (the path validation of the core; it
migrates, as the side of a daemon's stream that did not dial does): through a proxy that is the proxy's upstream
socket. The sender keeps the address it was given, as the dialler does."""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import reactor, task  # noqa: E402
from twisted.internet.error import ConnectionDone  # noqa: E402

from p2pd.core import udppackets, udpstream  # noqa: E402
from p2pd.peer.net.udp_port import UDPPort  # noqa: E402
from p2pd.peer.net.udp_socket import BatchPort  # noqa: E402
from p2pd.peer.net.udp_stream import StreamPort, UDPStream  # noqa: E402

CHUNK = 1 << 20


class Counter:
    """An IStreamReceiver that only counts what arrives (first and last byte timed)."""

    preamble = b""

    def __init__(self, on_done):
        self.got = 0
        self.on_done = on_done
        self.first = self.last = None
        buf = memoryview(bytearray(CHUNK))
        counter = self

        class Opener:
            def space(self, at_least=0):
                return buf

            def filled(self, n):
                counter.last = time.monotonic()
                if counter.first is None:
                    counter.first = counter.last
                counter.got += n
        self.opener = Opener()

    def stream_started(self, stream):
        pass

    def stream_arrived(self):
        pass

    def stream_moving(self):
        pass

    def stream_lost(self, reason):
        self.on_done(None if reason.check(ConnectionDone) else reason.getErrorMessage())


class Source:
    """A push producer writing *size* bytes, views of one random MiB over and over."""

    def __init__(self, stream, size):
        self.stream, self.left, self.paused = stream, size, False
        self.chunk = memoryview(bytearray(os.urandom(CHUNK)))

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


def hwm_mb():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) * 1024 / 1e6, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


class End:
    """One end: its one report line, printed when the receiver has the whole stream or the stream ends (or on
    SIGTERM), and when to stop. The receiver lingers after its report until the stream closes (the sender waits
    for its end to be acknowledged); the sender lingers ``CLOSING_TIME`` after the close, as a daemon would, to
    send the close again if the receiver did not hear it. A watchdog (every 50 ms) notices a receiver with the
    whole stream and a connection that closed without telling its stream."""

    def __init__(self, role, conn, port):
        self.role, self.conn, self.port = role, conn, port
        self.receiver = Counter(self.lost)
        self.began = None
        self.reported = self.ending = False
        self.watchdog = task.LoopingCall(self.watch)
        self.watchdog.start(0.05, now=False)

    def report(self, error=None):
        if self.reported:
            return
        self.reported = True
        conn, counter = self.conn, self.receiver
        if self.role == "recv":
            got, complete = counter.got, conn.recv.finished and counter.got == conn.recv.final
            seconds = counter.last - counter.first if counter.first is not None else 0.0
        else:
            got, complete = conn.send.acked_to, conn.all_acked
            seconds = time.monotonic() - (self.began or time.monotonic())
        stats = dict(conn.stats, srtt=conn.recovery.srtt, min_rtt=conn.recovery.min_rtt, cc=conn.cc.state,
                     cwnd=conn.cc.cwnd, port=dict(self.port.stats))
        print(json.dumps({
            "bytes": got, "seconds": round(seconds, 6), "complete": complete, "error": error,
            "resent": conn.send.resent, "lost_bytes": conn.recovery.lost_bytes,
            "lost_packets": conn.recovery.lost_packets, "ptos": conn.stats["ptos"], "forged": conn.opener.forged,
            "replayed": conn.opener.replayed, "duplicate": conn.recv.duplicate, "hwm_mb": hwm_mb(),
            "stats": stats,
        }), flush=True)

    def lost(self, error=None):
        """The stream ended (its receiver's stream_lost): report, then stop after the linger."""
        self.report(error)
        if not self.ending:
            self.ending = True
            reactor.callLater(0.2 if self.role == "recv" else udpstream.CLOSING_TIME, stop)

    def watch(self):
        conn = self.conn
        if self.role == "recv" and conn.recv.finished:
            self.report()
        if conn.state == "closed" and not self.ending:
            why = next((event for event in conn.events if event[0] == "closed"), None)
            self.lost("the connection closed%s and its stream was not told" % (
                " (code %s: %s)" % why[1:3] if why else ""))


def stop():
    if reactor.running:
        reactor.stop()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("role", choices=("send", "recv"))
    parser.add_argument("--bind", default="127.0.0.1", help="the address to listen on (127.0.0.1)")
    parser.add_argument("--to", help="send: HOST:PORT of the receiver (or a proxy)")
    parser.add_argument("--port", type=int, help="send: the receiver's (or a proxy's) port on 127.0.0.1")
    parser.add_argument("--size", type=int, default=0, help="send: bytes to send")
    parser.add_argument("--port-file", help="recv: also write the port here (atomically)")
    parser.add_argument("--secret", default="00" * 16, help="hex: both ends' keys derive from it")
    parser.add_argument("--idle", type=float, default=10.0, help="the stream's idle timeout, s (10)")
    args = parser.parse_args(argv)
    if args.role == "send" and not (args.to or args.port):
        parser.error("send needs --port or --to")
    secret = bytes.fromhex(args.secret)
    udp = UDPPort()
    listening = BatchPort(0, udp, interface=args.bind, reactor=reactor)
    listening.startListening()
    port = StreamPort(reactor, udp)
    if args.role == "recv":
        send, recv = keys(secret, False)
        conn = udpstream.Connection(send, recv, (args.bind, 9), reactor.seconds(), idle_timeout=args.idle)
        conn.owed.ping = False  # it learns where the sender is from the sender's first datagram
        here = listening.getHost().port
        if args.port_file:
            with open(args.port_file + ".tmp", "w") as f:
                f.write(str(here))
            os.rename(args.port_file + ".tmp", args.port_file)
        print(json.dumps({"port": here}), flush=True)
    else:
        host, p = args.to.rpartition(":")[::2] if args.to else ("127.0.0.1", args.port)
        send, recv = keys(secret, True)
        conn = udpstream.Connection(send, recv, (host, int(p)), reactor.seconds(), idle_timeout=args.idle,
                                    migrate=False)  # as the daemon's dialler: it keeps the address it dialled
    end = End(args.role, conn, port)
    reactor.addSystemEventTrigger("before", "shutdown", lambda: end.report("stopped (SIGTERM)"))
    stream = UDPStream(port, conn, end.receiver, reactor)
    port.add(stream)
    if args.role == "send":
        source = Source(stream, args.size)
        stream.registerProducer(source, True)
        end.began = time.monotonic()
        reactor.callLater(0, source.resumeProducing)
    reactor.run()


if __name__ == "__main__":
    main()
