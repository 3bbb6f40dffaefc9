"""A discrete-event network for the sans-IO UDP stream: two :class:`~p2pd.core.udpstream.Connection` s joined by
a simulated path (delay, bandwidth with a drop-tail queue, and a function that decides each datagram's fate),
run on explicit time. Tests use it to drive the core through loss, reordering, duplication, corruption and
blackouts without a reactor or a socket."""

import hashlib
import heapq
import itertools
import random

from p2pd.core import udppackets, udpstream

A, B = ("198.51.100.1", 4000), ("198.51.100.2", 5000)


def pair(now=0.0, **options):
    exporter, secret = b"e" * 32, b"s" * 32
    a_send, a_recv = udppackets.derive(exporter, secret, True)
    b_send, b_recv = udppackets.derive(exporter, secret, False)
    seeds = itertools.count()
    rng = lambda n: random.Random(next(seeds)).randbytes(n)  # noqa: E731
    a = udpstream.Connection(a_send, a_recv, B, now, random=rng, migrate=False, **options)
    b = udpstream.Connection(b_send, b_recv, A, now, random=rng, **options)
    return a, b


class Direction:
    """One way of the path: ``fate(datagram, now)`` returns a list of ``(extra delay, datagram)`` to deliver
    (empty: dropped), then the bandwidth and delay apply."""

    def __init__(self, delay=0.01, rate=None, queue=64 << 10, fate=None):
        self.delay = delay
        self.rate = rate  # bytes per second, or None
        self.queue = queue
        self.fate = fate or (lambda datagram, now: [(0.0, datagram)])
        self.busy_until = 0.0
        self.dropped = 0
        self.sent = 0

    def schedule(self, datagram, now):
        out = []
        for extra, data in self.fate(datagram, now):
            start = now
            if self.rate is not None:
                backlog = max(self.busy_until - now, 0.0) * self.rate
                if backlog + len(data) > self.queue:
                    self.dropped += 1
                    continue
                start = max(self.busy_until, now)
                self.busy_until = start + len(data) / self.rate
                start = self.busy_until
            out.append((start + self.delay + extra, data))
        self.sent += 1
        return out


def random_loss(p, seed=1):
    rng = random.Random(seed)

    def fate(datagram, now):
        return [] if rng.random() < p else [(0.0, datagram)]
    return fate


class Sim:
    """Runs *a* (sending *payload*) and *b* (reading it) until *b* has read it all and both sides closed, or
    until *limit* seconds of simulated time."""

    def __init__(self, a, b, ab=None, ba=None, a_addr=A):
        self.a, self.b = a, b
        self.ab, self.ba = ab or Direction(), ba or Direction()
        self.a_addr = a_addr  # where a's datagrams come from, as b sees it (a NAT may change it)
        self.now = 0.0
        self.queue = []
        self.seq = itertools.count()
        self.received = bytearray()
        self.closed = {}
        self.misrouted = 0

    def run(self, payload, limit=60.0, chunk=1 << 20, on_step=None):
        a, b = self.a, self.b
        a.write(payload) if len(payload) <= chunk else [a.write(payload[i:i + chunk])
                                                          for i in range(0, len(payload), chunk)]
        a.finish()
        while self.now < limit:
            self._flush(a, self.ab, "b")
            self._flush(b, self.ba, "a")
            self._events()
            if "a" in self.closed and "b" in self.closed:
                break
            if a.all_acked and b.recv.finished and a.state == "open":
                a.close(now=self.now)
                continue
            times = [t for t in (a.get_timer(), b.get_timer()) if t is not None]
            if self.queue:
                times.append(self.queue[0][0])
            if not times:
                break
            self.now = max(self.now, min(times))
            while self.queue and self.queue[0][0] <= self.now:
                _, _, to, data, src = heapq.heappop(self.queue)
                (b if to == "b" else a).receive_datagram(data, src, self.now)
            for conn in (a, b):
                timer = conn.get_timer()
                if timer is not None and timer <= self.now:
                    conn.handle_timer(self.now)
            if on_step is not None:
                on_step(self)
        return bytes(self.received)

    def _flush(self, conn, direction, to):
        for datagram, addr in conn.datagrams_to_send(self.now):
            src = self.a_addr if to == "b" else B
            if to == "a" and addr != self.a_addr:
                self.misrouted += 1  # a's old address (a NAT mapping that is gone) reaches nobody
                continue
            for when, data in direction.schedule(datagram, self.now):
                heapq.heappush(self.queue, (when, next(self.seq), to, data, src))

    def _events(self):
        for name, conn in (("a", self.a), ("b", self.b)):
            while conn.events:
                event = conn.events.popleft()
                if event[0] == "data" and conn is self.b:
                    self.received += conn.read()
                elif event[0] == "closed":
                    self.closed[name] = event
            if conn.state == "closed":
                self.closed.setdefault(name, ("closed",))


def digest(data):
    return hashlib.sha256(data).hexdigest()
