"""Two small parts of a UDP stream connection (:mod:`p2pd.core.udpstream`): the acknowledgements it owes, and the
validation of a new peer address."""

from p2pd.core import udpframes

ACK_EVERY = 8  # acknowledge at once after this many packets that ask for it
MAX_ACK_DELAY = 0.010  # else within this long
MAX_RANGES = 32
AMPLIFICATION = 3
CHALLENGE_TRIES = 5


class Acks:
    """The packet numbers received, as the ranges an ACK frame reports, and when that ACK is due."""

    def __init__(self, now):
        self.ranges = []  # (first, last), highest first: the newest packets received
        self.eliciting = 0
        self.deadline = None
        self.largest_time = now

    def received(self, pn, eliciting, now):
        ranges = self.ranges
        if not ranges or pn > ranges[0][1]:
            self.largest_time = now
        if ranges and pn == ranges[0][1] + 1:
            ranges[0] = (ranges[0][0], pn)
        else:
            ranges.append((pn, pn))
            ranges.sort(reverse=True)
            merged = []
            for first, last in ranges:
                if merged and merged[-1][0] <= last + 1:
                    merged[-1] = (min(first, merged[-1][0]), merged[-1][1])
                else:
                    merged.append((first, last))
            ranges[:] = merged[:MAX_RANGES]
        if not eliciting:
            return
        self.eliciting += 1
        # At once after ACK_EVERY, or when this packet is out of order or opens a gap (RFC 9000 section 13.2.1).
        if self.eliciting >= ACK_EVERY or ranges[0][1] != pn or (len(ranges) > 1 and ranges[0][0] == pn):
            self.deadline = now
        elif self.deadline is None:
            self.deadline = now + MAX_ACK_DELAY

    def frame(self, now):
        """The ACK frame's bytes (b"" if nothing was received yet); :meth:`sent` once it goes out."""
        if not self.ranges:
            return b""
        delay = int(max(now - self.largest_time, 0) * 1e6)
        return udpframes.encode(udpframes.Ack(tuple(self.ranges), delay))

    def sent(self):
        self.deadline = None
        self.eliciting = 0


class Paths:
    """The peer's address, and the check a new one passes before it is used (RFC 9000 sections 8.2 and 9): an
    authentic datagram with the newest packet number from another address gets a challenge sent there, and only
    the response from that address moves the connection. Until then at most ``AMPLIFICATION`` times what came
    from it is sent to it."""

    def __init__(self, addr, random):
        self.addr = addr
        self.random = random
        self.responses = []  # (token, addr) of challenges to answer
        self.challenge = None  # [token, addr, next try, tries] while a new address is validated
        self.unvalidated = {}  # addr -> [bytes received from it, bytes sent to it]
        self.changes = 0
        self.challenges = 0

    def arrived(self, addr, newest, size):
        """An authentic datagram of *size* bytes came from *addr*, not the current address."""
        counts = self.unvalidated.setdefault(addr, [0, 0])
        counts[0] += size
        if len(self.unvalidated) > 8:
            self.unvalidated.pop(next(iter(self.unvalidated)))
        if newest and (self.challenge is None or self.challenge[1] != addr):
            self.challenge = [self.random(8), addr, None, 0]
            self.challenges += 1

    def responded(self, token, addr):
        """True if this response moved the connection to *addr*."""
        if self.challenge is not None and token == self.challenge[0] and addr == self.challenge[1]:
            self.addr = addr
            self.challenge = None
            self.unvalidated.pop(addr, None)
            self.changes += 1
            return True
        return False

    def may_send(self, addr, size):
        if addr == self.addr:
            return True
        counts = self.unvalidated.setdefault(addr, [0, 0])
        if counts[1] + size > AMPLIFICATION * counts[0]:
            return False
        counts[1] += size
        return True

    def timer(self):
        return self.challenge[2] if self.challenge is not None else None

    def datagrams(self, seal, now, retry):
        """``[(datagram, addr), ...]``: the responses owed and a challenge due, each sealed by ``seal(body)``."""
        out = []
        bodies = [(udpframes.encode(udpframes.Response(token)), addr) for token, addr in self.responses]
        self.responses = []
        due = self.challenge_due(now, retry)
        for body, addr in bodies + ([due] if due is not None else []):
            datagram = seal(body)
            if self.may_send(addr, len(datagram)):
                out.append((datagram, addr))
        return out

    def challenge_due(self, now, retry):
        """``(body, addr)`` of a challenge to send now (again *retry* seconds later if unanswered), or None."""
        challenge = self.challenge
        if challenge is None or (challenge[2] is not None and now < challenge[2]):
            return None
        if challenge[3] >= CHALLENGE_TRIES:
            self.challenge = None
            return None
        challenge[2] = now + retry
        challenge[3] += 1
        return udpframes.encode(udpframes.Challenge(challenge[0])) + b"\x01", challenge[1]


class Owed:
    """The frames a connection owes its peer besides new stream data (credit, the end of the stream, a ping), and
    what becomes of the frames a packet carried (``("s", start, end)`` stream bytes, ``("c",)`` credit, ``("d",)``
    the end, ``("p",)`` a ping) when it is acknowledged or lost."""

    def __init__(self, send, recv):
        self.send = send
        self.recv = recv
        self.credit = False
        self.done = False
        self.done_acked = False
        self.ping = False

    def acked_packets(self, packets):
        """What *packets* (in packet-number order) carried arrived: stream ranges that follow each other are
        acknowledged as one."""
        start = end = None
        for packet in packets:
            for item in packet.frames:
                if item[0] == "s":
                    if item[1] == end:
                        end = item[2]
                        continue
                    if end is not None:
                        self.send.on_acked(start, end)
                    start, end = item[1], item[2]
                elif item[0] == "d":
                    self.done_acked = True
        if end is not None:
            self.send.on_acked(start, end)

    def lost(self, frames):
        for item in frames:
            if item[0] == "s":
                self.send.on_lost(item[1], item[2])
            elif item[0] == "c":
                self.credit = True
            elif item[0] == "d" and not self.done_acked:
                self.done = True

    def credit_frame(self, parts, frames):
        if self.credit:
            new = self.recv.read_to + self.recv.window
            self.recv.advertise(new)
            parts.append(udpframes.encode(udpframes.Credit(new)))
            frames.append(("c",))
            self.credit = False

    def closing_frames(self, parts, frames, room, probing):
        """The end of the stream once all of it was sent, or a ping if the packet would carry nothing else."""
        send = self.send
        if self.done and send.next >= send.final and not send.lost and room > 10:
            parts.append(udpframes.encode(udpframes.Done(send.final)))
            frames.append(("d",))
            self.done = False
        if not frames and (probing or self.ping):
            parts.append(b"\x01")
            frames.append(("p",))
            self.ping = False
