"""A seeded lossy UDP proxy between one client and one server, for tests and benchmarks of the UDP stream.

    .venv/bin/python benchmarks/lossy_proxy.py --listen 127.0.0.1:0 --target 127.0.0.1:PORT --seed 1 \\
        --loss 0.05 --rate 10mbit --delay 0.015 [--c2s-loss 0.2] [--rebind-at 1 --rebind-every 5] ...

It prints one JSON line on stdout once it listens (``{"port": N, ...}``), one line of counters on SIGUSR1, and a
last one (``"final": true``) on SIGTERM or Ctrl-C before it exits; ``--stats-file`` gets the same counters
(rewritten whole each time). Every impairment option applies to both directions; ``--c2s-NAME`` and
``--s2c-NAME`` set it for one (client -> server, server -> client). What each does: :mod:`benchmarks.lossy_path`.
Only loopback addresses are accepted.

In-process (tests, with any reactor that has ``callLater``, ``seconds`` and ``listenUDP``, e.g. a ``Clock``
with fake ports)::

    proxy = LossyProxy(reactor, ("127.0.0.1", server_port), c2s=Impairments(loss=0.2), seed=1)
    port = proxy.start()          # the client sends here
    proxy.stats()                 # the counters
    proxy.stop()

The client is whoever sent the last datagram to the listening port (the first one makes it known; a datagram
from another address makes that the client, as a server following a NAT rebinding would): replies go to it.
Datagrams that reach the upstream socket from anywhere but the target are counted (``stray``) and dropped.
``rebind_at``/``rebind_every``: at that time after start, and then every so often, the proxy sends to the server
from a new socket (a new source port, as a NAT that rebinds the client would) and closes the old one.
"""

import argparse
import ipaddress
import json
import os
import re
import signal
import socket
import sys

from twisted.internet.protocol import DatagramProtocol

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout, as a script
from benchmarks.lossy_path import Impairments, LossyPath  # noqa: E402

SOCKET_BUFFER = 1 << 20


class Side(DatagramProtocol):
    """One of the proxy's sockets: every datagram goes to *received(data, addr, side)*."""

    def __init__(self, received):
        self.received = received

    def datagramReceived(self, data, addr):
        self.received(data, addr, self)


class LossyProxy:
    """Relays datagrams between the client and *target* (host, port) through two :class:`LossyPath`s."""

    def __init__(self, reactor, target, c2s=Impairments(), s2c=Impairments(), seed=0, listen=("127.0.0.1", 0),
                 rebind_at=None, rebind_every=None, socket_buffer=SOCKET_BUFFER):
        self.reactor = reactor
        self.target = (target[0], int(target[1]))
        self.listen = (listen[0], int(listen[1]))
        self.paths = {"c2s": LossyPath(c2s, seed, "c2s"), "s2c": LossyPath(s2c, seed, "s2c")}
        self.seed = seed
        self.rebind_at, self.rebind_every = rebind_at, rebind_every
        self.socket_buffer = socket_buffer
        self.client = None
        self.client_changes = 0
        self.stray = 0
        self.send_errors = {"c2s": 0, "s2c": 0}
        self.upstream_ports = []
        self.started = None
        self.listening = self.upstream = self.timer = self.rebind_call = None

    # lifecycle

    def start(self) -> int:
        """Listen and open the upstream socket; the listening port."""
        self.started = self.reactor.seconds()
        for path in self.paths.values():
            path.epoch = self.started
        self.listening = self.open(self.listen[1], self.from_client)
        self.upstream = self.open_upstream()
        if self.rebind_at is not None:
            self.rebind_call = self.reactor.callLater(self.rebind_at, self.rebind)
        return self.port

    def open(self, port, received):
        listening = self.reactor.listenUDP(port, Side(received), interface=self.listen[0])
        sock = getattr(listening, "socket", None)  # a real port: room for bursts (capped by net.core.*mem_max)
        if sock is not None and self.socket_buffer:
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                sock.setsockopt(socket.SOL_SOCKET, option, self.socket_buffer)
        return listening

    def open_upstream(self):
        upstream = self.open(0, self.from_server)
        self.upstream_ports.append(upstream.getHost().port)
        return upstream

    def stop(self):
        """Cancel the timers and close both sockets; what is still in the paths is never sent."""
        for call in (self.timer, self.rebind_call):
            if call is not None and call.active():
                call.cancel()
        self.timer = self.rebind_call = None
        for listening in (self.listening, self.upstream):
            if listening is not None:
                listening.stopListening()
        self.listening = self.upstream = None

    @property
    def port(self):
        return self.listening.getHost().port

    def rebind(self):
        """A new upstream socket (so a new source port toward the server); the old one is closed."""
        old, self.upstream = self.upstream, self.open_upstream()
        old.stopListening()
        self.rebind_call = (self.reactor.callLater(self.rebind_every, self.rebind) if self.rebind_every
                            else None)

    # datagrams

    def from_client(self, data, addr, side):
        if addr != self.client:
            if self.client is not None:
                self.client_changes += 1
            self.client = addr
        self.paths["c2s"].admit(data, self.reactor.seconds())
        self.pump()

    def from_server(self, data, addr, side):
        if addr != self.target or side.transport is not self.upstream:
            self.stray += 1
            return
        self.paths["s2c"].admit(data, self.reactor.seconds())
        self.pump()

    def pump(self):
        """Send what is due in both directions, then arm the one timer for whatever is due next."""
        now = self.reactor.seconds()
        for direction, path in self.paths.items():
            for data in path.pop_due(now):
                self.send(direction, data)
        due = min((d for d in (p.next_deadline() for p in self.paths.values()) if d is not None), default=None)
        if due is None or self.listening is None:
            return
        if self.timer is not None and self.timer.active():
            if self.timer.getTime() <= due:
                return
            self.timer.cancel()
        self.timer = self.reactor.callLater(max(0.0, due - now), self.pump)

    def send(self, direction, data):
        if direction == "c2s":
            listening, addr = self.upstream, self.target
        else:
            listening, addr = self.listening, self.client
        try:
            listening.write(data, addr)
        except OSError:  # EAGAIN, ENOBUFS: a full socket buffer loses the datagram, as a full NIC queue would
            self.send_errors[direction] += 1

    def stats(self) -> dict:
        """Every counter: per direction (received, forwarded, dropped by cause, duplicated, corrupted, reordered,
        bytes, queue peak, pending) and the proxy's own (client changes, rebinds, stray datagrams)."""
        out = {"listen": self.listening.getHost().port if self.listening else None,
               "target": "%s:%d" % self.target, "seed": self.seed,
               "client": "%s:%d" % self.client if self.client else None, "client_changes": self.client_changes,
               "upstream_port": self.upstream_ports[-1] if self.upstream_ports else None,
               "upstream_ports": list(self.upstream_ports), "rebinds": max(0, len(self.upstream_ports) - 1),
               "stray": self.stray,
               "uptime": round(self.reactor.seconds() - self.started, 3) if self.started is not None else 0.0}
        for direction, path in self.paths.items():
            out[direction] = dict(path.stats(), send_errors=self.send_errors[direction])
        return out


# the command line


def parse_rate(text) -> float:
    """Bytes per second: ``1250000``, ``1.25MB``, ``10mbit``, ``800kbit`` (decimal multiples)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]?)(bit|b|)(?:/s|ps)?\s*", text, re.I)
    if not m:
        raise argparse.ArgumentTypeError("not a rate: %r (e.g. 10mbit, 1.25MB, 1250000)" % text)
    value = float(m.group(1)) * 1000 ** " kmg".index(m.group(2).lower() or " ")
    return value / 8 if m.group(3).lower() == "bit" else value


def parse_bytes(text) -> int:
    """``65536``, ``64K``, ``1M`` (binary multiples)."""
    m = re.fullmatch(r"\s*(\d+)\s*([kmg]?)(?:i?b)?\s*", text, re.I)
    if not m:
        raise argparse.ArgumentTypeError("not a size: %r (e.g. 64K, 65536)" % text)
    return int(m.group(1)) << (10 * " kmg".index(m.group(2).lower() or " "))


def floats(text) -> tuple:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("not a comma-separated list of numbers: %r" % text) from None


OPTIONS = [  # (Impairments field, type, help)
    ("loss", float, "drop probability"),
    ("burst", floats, "Gilbert-Elliott burst loss P,R[,H[,K]]: good->bad P, bad->good R, loss in bad H (1), "
                      "in good K (0)"),
    ("duplicate", float, "probability a datagram is sent twice"),
    ("duplicate_delay", float, "seconds the copy comes after the original (0: right behind it)"),
    ("corrupt", float, "share of datagrams with bits flipped"),
    ("corrupt_bits", int, "bits flipped in each corrupted datagram (1)"),
    ("delay", float, "one-way delay, seconds"),
    ("jitter", float, "plus a uniform 0..JITTER s per datagram (order kept)"),
    ("rate", parse_rate, "bandwidth: bytes/s, or 10mbit, 1.25MB"),
    ("queue", parse_bytes, "bytes that may wait for the link; more are tail-dropped (64K)"),
    ("bucket", parse_bytes, "token bucket depth: a burst at once after idle time (0)"),
    ("reorder", float, "probability a datagram is taken out of order"),
    ("reorder_depth", int, "...held back until 1..DEPTH later datagrams passed it (3)"),
    ("reorder_delay", float, "...or, when given, sent this many seconds late instead"),
    ("reorder_timeout", float, "a datagram held back goes at the latest after this many seconds (0.5)"),
    ("blackout", floats, "X,Y[,FIRST]: drop everything for X s at FIRST (Y), FIRST+Y, FIRST+2Y, ..."),
]


def address(text) -> tuple:
    host, _, port = text.rpartition(":")
    try:
        if not ipaddress.ip_address(host).is_loopback or ipaddress.ip_address(host).version != 4:
            raise ValueError
        return host, int(port)
    except ValueError:
        raise argparse.ArgumentTypeError("not an IPv4 loopback HOST:PORT (127.0.0.0/8 only): %r" % text) from None


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--listen", type=address, default=("127.0.0.1", 0), help="where the client sends (127.0.0.1:0)")
    add("--target", type=address, required=True, help="the server, HOST:PORT on loopback")
    add("--seed", type=int, default=0, help="the random decisions' seed (0)")
    add("--rebind-at", type=float, help="seconds after start when the upstream source port first changes")
    add("--rebind-every", type=float, help="...and then every this many seconds")
    add("--stats-file", help="write the counters here (JSON) on SIGUSR1 and at exit")
    for name, kind, text in OPTIONS:
        flag = name.replace("_", "-")
        add("--" + flag, type=kind, help=text)
        for direction in ("c2s", "s2c"):
            add("--%s-%s" % (direction, flag), dest="%s_%s" % (direction, name), type=kind, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for direction in ("c2s", "s2c"):
        chosen = {}
        for name, _, _ in OPTIONS:
            value = getattr(args, "%s_%s" % (direction, name))
            value = getattr(args, name) if value is None else value
            if value is not None:
                chosen[name] = value
        try:
            setattr(args, direction, Impairments(**chosen))
        except ValueError as e:
            parser.error("%s: %s" % (direction, e))
    if args.rebind_every is not None and (args.rebind_at is None or args.rebind_every <= 0):
        parser.error("--rebind-every needs --rebind-at and a positive period")
    return args


def report(proxy, args, final=False):
    stats = dict(proxy.stats(), final=final)
    line = json.dumps(stats, sort_keys=True)
    print(line, flush=True)
    if args.stats_file:
        partial = args.stats_file + ".part"
        with open(partial, "w") as f:
            f.write(line + "\n")
        os.replace(partial, args.stats_file)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from twisted.internet import reactor

    proxy = LossyProxy(reactor, args.target, c2s=args.c2s, s2c=args.s2c, seed=args.seed, listen=args.listen,
                       rebind_at=args.rebind_at, rebind_every=args.rebind_every)
    port = proxy.start()
    print(json.dumps({"port": port, "listen": "%s:%d" % (args.listen[0], port),
                      "target": "%s:%d" % args.target, "pid": os.getpid()}), flush=True)
    signal.signal(signal.SIGUSR1, lambda signum, frame: reactor.callFromThread(report, proxy, args))
    reactor.addSystemEventTrigger("before", "shutdown", lambda: report(proxy, args, final=True))
    reactor.run()  # SIGTERM and SIGINT stop it (Twisted's own handlers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
