"""(b) of udp_bench.py, the TCP transfer path: the bytes of a file transfer over the data connection files use,
between two processes on 127.0.0.1, without the disk.

    .venv/bin/python benchmarks/tcp_records.py receive            # prints {"port": P}, later its result
    .venv/bin/python benchmarks/tcp_records.py send --port P --size 256M

The receiver listens on the peer's TCP port machinery (:class:`~p2pd.peer.net.demux.DemuxFactory`: the preamble
names the session, :class:`~p2pd.peer.net.tcp_paths.TCPDataPaths` hands the connection to it) and the sender dials
with a :class:`~p2pd.peer.net.tcp_data.DataConnection`, as the daemon's do. The sender works as
``SendSession.produce`` does: each 1 MiB chunk (one buffer of random bytes, read once) is sealed into one reused
record buffer (AES-256-GCM, :mod:`p2pd.core.datastream`) and written, at most ``TURN_BYTES`` per reactor turn,
pausing while the socket holds part of a record; then the end-of-stream record. The receiver's records are read
with ``recv_into`` into its :class:`~p2pd.core.datastream.Opener` and decrypted into a reused
:class:`~p2pd.core.datastream.BufferPool` buffer, then counted (no disk writer, no hashing: the benchmark measures
the path, as the UDP stream's receiver only counts). It answers the end with a ``complete`` record and the sender
closes.

Each prints one JSON line at the end (or on SIGTERM, with what it has): ``bytes`` (file bytes: the receiver those
it opened, the sender those it wrote), ``seconds`` (the receiver: first byte to the last record; the sender: from
connecting to the receiver's answer), ``complete``, ``records`` and ``hwm_mb`` (peak resident memory, VmHWM, MB).
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import endpoints, protocol, reactor  # noqa: E402
from twisted.internet.error import ConnectionDone  # noqa: E402
from zope.interface import implementer  # noqa: E402
from twisted.internet.interfaces import IPushProducer  # noqa: E402

from p2pd.core import datastream  # noqa: E402
from p2pd.peer.files.sessions import TURN_BYTES  # noqa: E402
from p2pd.peer.net.demux import DemuxFactory  # noqa: E402
from p2pd.peer.net.tcp_data import DataConnection  # noqa: E402
from p2pd.peer.net.tcp_paths import TCPDataPaths  # noqa: E402
from udp_stream_ends import hwm_mb  # noqa: E402  (benchmarks/ is the script's dir)

SECRET = bytes(range(32))


class End:
    """What both ends share: the session's keys, the stream, the figures and the one report."""

    def __init__(self):
        self.keys = datastream.SessionKeys(SECRET)
        self.preamble = self.keys.preamble
        self.stream = None
        self.bytes = self.records = 0
        self.began = self.ended = None
        self.complete = False
        self.error = None
        self.reported = False

    def stream_moving(self):
        pass

    def stream_lost(self, reason):
        if not reason.check(ConnectionDone) and not self.complete:
            self.error = reason.getErrorMessage()
        self.report()
        reactor.callLater(0, lambda: reactor.running and reactor.stop())

    def stream_arrived(self):
        try:
            for kind, payload in self.opener.records():
                self.records += 1
                self.record(kind, payload)
        except datastream.StreamError as e:
            self.error = str(e)
            self.stream.close(abort=True)

    def report(self, error=None):
        if self.reported:
            return
        self.reported = True
        seconds = (self.ended or time.monotonic()) - self.began if self.began is not None else 0.0
        print(json.dumps({"bytes": self.bytes, "seconds": round(seconds, 6), "complete": self.complete,
                          "records": self.records, "error": self.error or error, "hwm_mb": hwm_mb()}), flush=True)


class Receiver(End):
    def __init__(self):
        super().__init__()
        self.buffers = datastream.BufferPool()
        self.opener = datastream.Opener(self.keys.to_receiver, self.buffers)

    def stream_started(self, stream):
        self.stream = stream
        self.sealer = datastream.Sealer(self.keys.to_sender)

    def stream_arrived(self):
        if self.began is None:
            self.began = time.monotonic()
        super().stream_arrived()

    def record(self, kind, payload):
        if kind == datastream.DATA:
            self.bytes += len(payload)
            self.buffers.give(payload)
        elif kind == datastream.FINISH:
            self.ended = time.monotonic()
            self.complete = True
            self.report()
            self.stream.write(self.sealer.json({"t": "complete"}))


@implementer(IPushProducer)
class Sender(End):
    def __init__(self, size):
        super().__init__()
        self.size = size
        self.opener = datastream.Opener(self.keys.to_sender)
        self.plain = memoryview(bytearray(os.urandom(datastream.CHUNK)))
        self.record_buf = bytearray(datastream.STANDARD)
        self.paused = True
        self.scheduled = None
        self.finished_sending = False

    def stream_started(self, stream):
        self.began = time.monotonic()
        self.stream = stream
        self.sealer = datastream.Sealer(self.keys.to_receiver)
        stream.registerProducer(self, True)
        self.resumeProducing()

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        if self.scheduled is None and not self.finished_sending:
            self.scheduled = reactor.callLater(0, self.produce)

    def stopProducing(self):
        self.paused = True

    def produce(self):
        self.scheduled = None
        budget, write = TURN_BYTES, self.stream.write
        while not self.paused and not self.finished_sending and not self.stream.closed:
            n = min(self.size - self.bytes, datastream.CHUNK)
            if n <= 0:
                write(self.sealer.finish())
                self.finished_sending = True
                self.stream.unregisterProducer()
                return
            write(self.sealer.data_into(self.plain[:n], self.record_buf))
            self.bytes += n
            budget -= n
            if budget <= 0:
                if not self.paused:
                    self.scheduled = reactor.callLater(0, self.produce)
                return

    def record(self, kind, payload):
        if kind == datastream.JSON and payload.get("t") == "complete":
            self.ended = time.monotonic()
            self.complete = True
            self.stream.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("role", choices=("receive", "send"))
    parser.add_argument("--port", type=int, help="send: where the receiver listens on 127.0.0.1")
    parser.add_argument("--size", type=int, default=256 << 20, help="send: file bytes to send (256 MiB)")
    args = parser.parse_args(argv)
    if args.role == "receive":
        end = Receiver()
        paths = TCPDataPaths(reactor)
        paths.waiting[end.keys.sid] = end
        port = reactor.listenTCP(0, DemuxFactory(protocol.Factory(), paths, reactor), interface="127.0.0.1")
        print(json.dumps({"port": port.getHost().port}), flush=True)
    else:
        if not args.port:
            parser.error("send needs --port")
        end = Sender(args.size)
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", args.port, timeout=10)
        d = endpoints.connectProtocol(endpoint, DataConnection(end, reactor, dialer=True))

        def failed(f):
            end.report(f.getErrorMessage())
            reactor.stop()
        d.addErrback(failed)
    reactor.addSystemEventTrigger("before", "shutdown", lambda: end.report("stopped (SIGTERM)"))
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
