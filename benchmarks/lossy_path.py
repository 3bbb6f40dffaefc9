"""One direction of the lossy UDP proxy, pure: what the path does to each datagram and when it comes out.

No ``twisted.internet`` here (the proxy, :mod:`benchmarks.lossy_proxy`, is the thin adapter): the caller passes
``now`` (its clock, in seconds), hands every datagram to :meth:`LossyPath.admit`, sends what
:meth:`LossyPath.pop_due` returns in that order, and asks again at :meth:`LossyPath.next_deadline`.

What a datagram goes through, in this order (each stage off unless configured, see :class:`Impairments`):

1. blackout: every datagram dropped during the blackout windows;
2. burst loss: a Gilbert-Elliott chain stepped once per datagram (good -> bad with probability ``p``, bad -> good
   with ``r``; lost with probability ``h`` in the bad state, ``k`` in the good one): mean burst length ``1/r``;
3. random loss with probability ``loss``;
4. corruption: ``corrupt_bits`` distinct random bits flipped in a share ``corrupt`` of the datagrams;
5. duplication: a share ``duplicate`` sent twice (the copy ``duplicate_delay`` s after the original, or right
   behind it);
6. the link: a token bucket of ``rate`` bytes/s (``bucket`` bytes of burst after idle time) fed by a FIFO queue
   of at most ``queue`` bytes; a datagram that does not fit is dropped (tail drop, as a router does);
7. propagation: ``delay`` plus a uniform 0..``jitter`` s each, first in first out: jitter alone never reorders, so
   when datagrams come closer together than the jitter, one that drew a short delay waits for the one before it
   (the delays bunch toward ``delay + jitter``);
8. reordering: a share ``reorder`` taken out of the FIFO, either ``reorder_delay`` s later than it would have
   come, or (without a delay) held back until 1..``reorder_depth`` later datagrams (not held back themselves)
   have passed it, at the most ``reorder_timeout`` s.

Every random choice comes from its own generator, seeded from (seed, direction, stage), so the same seed and the
same datagrams give the same decisions, and turning one stage on does not change another's draws.
"""

import collections
import dataclasses
import heapq
import itertools
import random

CAUSES = ("blackout", "burst", "loss", "queue")
STAGES = ("burst", "loss", "corrupt", "duplicate", "jitter", "reorder")


@dataclasses.dataclass(frozen=True)
class Impairments:
    """What one direction does; the defaults are a perfect wire. Times in seconds, sizes in bytes."""

    loss: float = 0.0
    burst: tuple = ()               # Gilbert-Elliott (p, r[, h=1.0[, k=0.0]])
    duplicate: float = 0.0
    duplicate_delay: float = 0.0
    corrupt: float = 0.0
    corrupt_bits: int = 1
    delay: float = 0.0
    jitter: float = 0.0
    rate: float = 0.0               # bytes per second; 0: no bandwidth limit
    queue: int = 64 * 1024          # bytes waiting for the link at the most
    bucket: int = 0                 # token bucket depth (a datagram always fits a bucket of its own size)
    reorder: float = 0.0
    reorder_depth: int = 3
    reorder_delay: float = 0.0
    reorder_timeout: float = 0.5
    blackout: tuple = ()            # (X, Y[, first=Y]): dropped for X s at first, first + Y, first + 2Y, ...

    def __post_init__(self):
        for name in ("loss", "duplicate", "corrupt", "reorder"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError("%s is a probability, from 0 to 1: %r" % (name, getattr(self, name)))
        for name in ("duplicate_delay", "delay", "jitter", "rate", "queue", "bucket", "reorder_delay",
                     "reorder_timeout"):
            if getattr(self, name) < 0:
                raise ValueError("%s cannot be negative: %r" % (name, getattr(self, name)))
        if self.corrupt_bits < 1 or self.reorder_depth < 1:
            raise ValueError("corrupt_bits and reorder_depth are at least 1")
        if self.burst and (len(self.burst) not in (2, 3, 4) or not all(0.0 <= p <= 1.0 for p in self.burst)):
            raise ValueError("burst is (p, r[, h[, k]]), each a probability: %r" % (self.burst,))
        if self.blackout and (len(self.blackout) not in (2, 3) or not 0 < self.blackout[0] <= self.blackout[1]
                              or min(self.blackout) < 0):
            raise ValueError("blackout is (X, Y[, first]) with 0 < X <= Y: %r" % (self.blackout,))


def flip_bits(data: bytes, bits: int, rng: random.Random) -> bytes:
    """*data* with *bits* distinct random bits flipped (all of them when it has fewer)."""
    if not data:
        return data
    out = bytearray(data)
    for bit in rng.sample(range(len(out) * 8), min(bits, len(out) * 8)):
        out[bit >> 3] ^= 1 << (bit & 7)
    return bytes(out)


class LossyPath:
    """The datagrams of one direction, from :meth:`admit` to :meth:`pop_due`, and the counters of what
    happened to them (:meth:`stats`). *epoch* is when the blackout schedule starts (the proxy's start)."""

    def __init__(self, impairments=Impairments(), seed=0, direction="c2s", epoch=0.0):
        self.config = impairments
        self.epoch = epoch
        self.rng = {stage: random.Random("%s/%s/%s" % (seed, direction, stage)) for stage in STAGES}
        self.bad = False                    # the Gilbert-Elliott state
        self.link_free = float("-inf")      # when the last datagram left the bucket
        self.tokens = 0.0                   # the bucket's level then
        self.waiting = collections.deque()  # departure times and sizes of datagrams in the queue (FIFO)
        self.waiting_bytes = 0
        self.last_arrival = float("-inf")   # the FIFO's latest arrival
        self.schedule = []                  # heap of (due, seq, datagram)
        self.seq = itertools.count()
        self.held = []                      # [datagram, passes left, release time] held back for reordering
        self.counters = {"received": 0, "received_bytes": 0, "forwarded": 0, "forwarded_bytes": 0,
                         "dropped": dict.fromkeys(CAUSES, 0), "dropped_bytes": 0, "duplicated": 0, "corrupted": 0,
                         "reordered": 0, "queue_peak_bytes": 0}

    # the datagram's way

    def admit(self, data: bytes, now: float):
        """Take one datagram that arrived at *now*."""
        counters, config = self.counters, self.config
        counters["received"] += 1
        counters["received_bytes"] += len(data)
        cause = self.lost(now)
        if cause:
            self.drop(cause, data)
            return
        if config.corrupt and self.rng["corrupt"].random() < config.corrupt:
            data = flip_bits(data, config.corrupt_bits, self.rng["corrupt"])
            counters["corrupted"] += 1
        self.transmit(data, now)
        if config.duplicate and self.rng["duplicate"].random() < config.duplicate:
            counters["duplicated"] += 1
            self.transmit(data, now, config.duplicate_delay)

    def lost(self, now):
        """Why the datagram arriving at *now* is lost before the link (None: it is not)."""
        config = self.config
        if config.blackout:
            length, period = config.blackout[:2]
            first = config.blackout[2] if len(config.blackout) > 2 else period
            since = now - self.epoch - first
            if since >= 0 and since % period < length:
                return "blackout"
        if config.burst:
            p, r, h, k = (tuple(config.burst) + (1.0, 0.0))[:4]
            rng = self.rng["burst"]
            if self.bad:
                self.bad = rng.random() >= r
            else:
                self.bad = rng.random() < p
            if rng.random() < (h if self.bad else k):
                return "burst"
        if config.loss and self.rng["loss"].random() < config.loss:
            return "loss"
        return None

    def drop(self, cause, data):
        self.counters["dropped"][cause] += 1
        self.counters["dropped_bytes"] += len(data)

    def transmit(self, data, now, extra=0.0):
        """Through the link and the propagation delay, then into the FIFO (or out of it, for reordering)."""
        config = self.config
        departure = self.depart(len(data), now)
        if departure is None:
            self.drop("queue", data)
            return
        arrival = departure + config.delay
        if config.jitter:
            arrival += self.rng["jitter"].uniform(0.0, config.jitter)
        if extra:
            self.at(arrival + extra, data)  # a delayed duplicate: out of order by design
            return
        if config.reorder and self.rng["reorder"].random() < config.reorder:
            self.counters["reordered"] += 1
            if config.reorder_delay:
                self.at(arrival + config.reorder_delay, data)
            else:
                self.held.append([data, self.rng["reorder"].randint(1, config.reorder_depth),
                                  max(arrival, self.last_arrival) + config.reorder_timeout])
            return
        arrival = self.last_arrival = max(arrival, self.last_arrival)
        self.at(arrival, data)
        if self.held:
            for item in self.held:
                item[1] -= 1
                if item[1] == 0:
                    self.at(arrival, item[0])  # right behind the datagram that passed it last
            self.held = [item for item in self.held if item[1] > 0]

    def depart(self, size, now):
        """When a datagram of *size* bytes handed to the link at *now* leaves it (None: the queue is full)."""
        config = self.config
        if not config.rate:
            return now
        waiting = self.waiting
        while waiting and waiting[0][0] <= now:
            self.waiting_bytes -= waiting.popleft()[1]
        if self.waiting_bytes + size > config.queue:
            return None
        start = max(now, self.link_free)
        tokens = min(max(config.bucket, size), self.tokens + (start - self.link_free) * config.rate)
        departure = start if tokens >= size else start + (size - tokens) / config.rate
        self.tokens = tokens + (departure - start) * config.rate - size
        self.link_free = departure
        if departure > now:
            waiting.append((departure, size))
            self.waiting_bytes += size
            self.counters["queue_peak_bytes"] = max(self.counters["queue_peak_bytes"], self.waiting_bytes)
        return departure

    def at(self, due, data):
        heapq.heappush(self.schedule, (due, next(self.seq), data))

    # what comes out

    def pop_due(self, now) -> list:
        """The datagrams due by *now*, in the order they leave the path."""
        if self.held and any(item[2] <= now for item in self.held):
            for item in self.held:
                if item[2] <= now:
                    self.at(item[2], item[0])
            self.held = [item for item in self.held if item[2] > now]
        out = []
        schedule = self.schedule
        while schedule and schedule[0][0] <= now:
            out.append(heapq.heappop(schedule)[2])
        if out:
            self.counters["forwarded"] += len(out)
            self.counters["forwarded_bytes"] += sum(map(len, out))
        return out

    def next_deadline(self):
        """When the next datagram is due (None: nothing is pending)."""
        times = [self.schedule[0][0]] if self.schedule else []
        times += [item[2] for item in self.held]
        return min(times, default=None)

    def pending(self) -> int:
        return len(self.schedule) + len(self.held)

    def stats(self) -> dict:
        out = dict(self.counters, dropped=dict(self.counters["dropped"]), pending=self.pending())
        out["dropped_total"] = sum(out["dropped"].values())
        return out
