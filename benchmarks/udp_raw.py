"""The raw UDP blast of udp_bench.py, the ceiling: Twisted DatagramProtocols on the default reactor, no reliability.

    .venv/bin/python benchmarks/udp_raw.py receive [--idle 3]       # prints {"port": P}, later its result
    .venv/bin/python benchmarks/udp_raw.py send --port P --size 256M [--datagram 1200] [--rate 10mbit]

The sender writes ``--size`` bytes in datagrams of ``--datagram`` bytes to 127.0.0.1:P, as fast as it can (or at
``--rate`` bytes/s, paced every millisecond), ``--batch`` datagrams per reactor turn. When the socket is full
(EAGAIN) it waits for the reactor to say it is writable again; on ENOBUFS it waits a millisecond: it backs off,
it does not spin. Then it sends an end marker (with its counts) every 20 ms for half a second and prints its own
figures as one JSON line.

The receiver counts every datagram that is not an end marker. It prints one JSON line when the first end marker
arrives, when nothing has arrived for ``--idle`` s after the first datagram, or on SIGTERM (whatever came so far):
``{"bytes", "datagrams", "seconds"}`` (first datagram to last), whether the sender's marker came (``complete``:
the sender got to the end, and what was going to arrive did) and the sender's own counts from it, then exits.
"""

import argparse
import errno
import json
import socket
import sys

from twisted.internet import task
from twisted.internet.interfaces import IWriteDescriptor
from twisted.internet.protocol import DatagramProtocol
from zope.interface import implementer

MARKER = b"P2PD-UDP-END "
RCVBUF = 4 << 20  # capped by net.core.rmem_max


class Receiver(DatagramProtocol):
    def __init__(self, reactor, idle):
        self.reactor, self.idle = reactor, idle
        self.bytes = self.datagrams = 0
        self.first = self.last = None
        self.marker = None
        self.watch = None

    def datagramReceived(self, data, addr):
        if data[:1] == b"P" and data.startswith(MARKER):
            self.marker = json.loads(data[len(MARKER):])
            self.reactor.stop()
            return
        now = self.reactor.seconds()
        if self.first is None:
            self.first = now
            self.watch = task.LoopingCall(self.check_idle)
            self.watch.clock = self.reactor
            self.watch.start(0.25, now=False)
        self.last = now
        self.datagrams += 1
        self.bytes += len(data)

    def check_idle(self):
        if self.reactor.seconds() - self.last > self.idle:
            self.reactor.stop()

    def result(self) -> dict:
        seconds = self.last - self.first if self.first is not None else 0.0
        out = {"bytes": self.bytes, "datagrams": self.datagrams, "seconds": round(seconds, 6),
               "complete": self.marker is not None}
        if self.marker:
            out["sender"] = self.marker
        return out


@implementer(IWriteDescriptor)
class Writable:
    """Calls *then* once the socket *fd* can take a datagram again (one ``doWrite``)."""

    def __init__(self, reactor, fd, then):
        self.reactor, self.fd, self.then = reactor, fd, then

    def fileno(self):
        return self.fd

    def doWrite(self):
        self.reactor.removeWriter(self)
        self.then()

    def connectionLost(self, reason):
        pass

    def logPrefix(self):
        return "udp-blast"


class Blaster(DatagramProtocol):
    """Sends *size* bytes to *target* in datagrams of *datagram* bytes, then the end markers."""

    def __init__(self, reactor, target, size, datagram, rate, batch):
        self.reactor, self.target, self.size, self.rate, self.batch = reactor, target, size, rate, batch
        self.payload = b"\0" * datagram
        self.sent_bytes = self.sent = self.eagain = self.enobufs = 0
        self.began = self.ended = None
        self.markers = 0

    def startProtocol(self):
        self.transport.connect(*self.target)
        self.began = self.reactor.seconds()
        self.reactor.callLater(0, self.blast)

    def stopProtocol(self):
        """The port closed: in connected mode Twisted closes it once the receiver has gone (ICMP port unreachable),
        which it does when it has the end marker."""
        if self.reactor.running:
            self.reactor.stop()

    def blast(self):
        if self.transport is None:
            return
        left = self.size - self.sent_bytes
        budget = self.batch
        if self.rate:
            allowed = self.rate * (self.reactor.seconds() - self.began) - self.sent_bytes
            budget = min(budget, max(0, int(allowed // len(self.payload)) + 1))
        write, payload = self.transport.write, self.payload
        while budget and left:
            data = payload if left >= len(payload) else payload[:left]
            try:
                write(data)
            except BlockingIOError:
                self.eagain += 1
                self.reactor.addWriter(Writable(self.reactor, self.transport.fileno(), self.blast))
                return
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                self.enobufs += 1
                self.reactor.callLater(0.001, self.blast)
                return
            self.sent += 1
            self.sent_bytes += len(data)
            left -= len(data)
            budget -= 1
        if left:
            self.reactor.callLater(0.001 if self.rate else 0, self.blast)
        else:
            self.ended = self.reactor.seconds()
            self.end_marker()

    def counts(self) -> dict:
        seconds = (self.ended or self.reactor.seconds()) - self.began
        return {"datagrams": self.sent, "bytes": self.sent_bytes, "seconds": round(seconds, 6),
                "eagain": self.eagain, "enobufs": self.enobufs}

    def end_marker(self):
        if self.transport is None:
            return
        try:
            self.transport.write(MARKER + json.dumps(self.counts()).encode())
        except OSError:
            pass
        self.markers += 1
        if self.markers < 25:
            self.reactor.callLater(0.02, self.end_marker)
        else:
            self.reactor.stop()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("role", choices=("receive", "send"))
    parser.add_argument("--port", type=int, help="send: where the receiver (or a proxy) listens on 127.0.0.1")
    parser.add_argument("--size", type=int, default=256 << 20, help="send: bytes to send (256 MiB)")
    parser.add_argument("--datagram", type=int, default=1200, help="send: bytes per datagram (1200)")
    parser.add_argument("--rate", type=float, default=0.0, help="send: bytes per second (0: as fast as it can)")
    parser.add_argument("--batch", type=int, default=256, help="send: datagrams per reactor turn at the most")
    parser.add_argument("--idle", type=float, default=3.0, help="receive: give up after this long with nothing")
    args = parser.parse_args(argv)
    from twisted.internet import reactor

    if args.role == "receive":
        receiver = Receiver(reactor, args.idle)
        port = reactor.listenUDP(0, receiver, interface="127.0.0.1", maxPacketSize=65536)
        port.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        rcvbuf = port.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        print(json.dumps({"port": port.getHost().port, "rcvbuf": rcvbuf}), flush=True)
        reactor.addSystemEventTrigger("before", "shutdown", lambda: print(json.dumps(dict(
            receiver.result(), rcvbuf=rcvbuf)), flush=True))
    else:
        if not args.port:
            parser.error("send needs --port")
        blaster = Blaster(reactor, ("127.0.0.1", args.port), args.size, args.datagram, args.rate, args.batch)
        reactor.listenUDP(0, blaster, interface="127.0.0.1")
        reactor.addSystemEventTrigger("before", "shutdown", lambda: print(json.dumps(blaster.counts()),
                                                                          flush=True))
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
