"""One UDP stream connection, sans-IO (the shape of aioquic's ``QuicConnection``): a reliable, ordered,
flow-controlled, congestion-controlled byte stream each way, in sealed datagrams (:mod:`p2pd.core.udppackets`)
of frames (:mod:`p2pd.core.udpframes`).

The caller feeds it ``receive_datagram(data, addr, now)``, takes ``datagrams_to_send(now)`` and sends them, and
calls ``handle_timer(now)`` at ``get_timer()``; the application writes with ``write``/``finish``, reads with
``read`` and learns what happened from ``events`` (a deque of tuples):

``("data",)``            in-order bytes are ready to ``read()``
``("finished",)``        the peer's stream ended and everything in it was read
``("writable",)``        the bytes buffered for sending fell below ``send_limit``
``("path", addr)``       the peer's address changed (after the new path proved itself)
``("closed", code, reason, by_peer)``  the connection is over (code 0: cleanly)

Nothing here does I/O or reads a clock: time is passed in, in seconds.

**Paths.** Datagrams go to the address the connection was made for. On the side that follows its peer
(``migrate``: the side that did not dial, as a QUIC server follows its client), an authentic datagram that
carries the newest packet number from another address (a NAT rebinding) starts a path validation: a challenge
goes there, and only the peer's response from that address moves the connection over. The dialling side keeps
the address it dialled (and takes authentic datagrams from anywhere): asymmetric routes stay as they are. Until then at most
``AMPLIFICATION`` times the bytes received from the new address are sent to it (RFC 9000 sections 8.2 and 9).
"""

import collections
import os
import struct

from p2pd.core import udpframes, udppackets
from p2pd.core.udpbuffers import RecvBuffer, SendBuffer
from p2pd.core.udpcc import BBR
from p2pd.core.udpparts import MAX_ACK_DELAY, Acks, Owed, Paths
from p2pd.core.udprecovery import Recovery, Sent

MAX_DATAGRAM = 1200  # fits a 1280-byte IPv6 path with room for the IP and UDP headers
WINDOW = 16 << 20
IDLE_TIMEOUT = 10.0  # no authentic datagram for this long: the peer is gone (both sides ping at a third of it)
PTO_CAP = 0.5
PACING_QUANTUM = 0.001  # a burst may run this far ahead of the pacing rate (batched sends need bursts)
CLOSING_TIME = 1.0

CODE_OK, CODE_IDLE, CODE_ERROR, CODE_ABORT, CODE_PROTOCOL = 0, 1, 2, 3, 4
_STREAM_HEAD = udpframes.encode_varint
_HEAD4 = struct.Struct(">BIH")  # a STREAM frame's type, offset (4-byte varint) and length (2-byte varint)
_HEAD8 = struct.Struct(">BQH")


class Packets:
    """How a :class:`Connection` fills and seals its packets (a part of it, kept apart for size)."""

    def _build(self, now, probing):
        """One packet of what is owed (ACK, credit, end of stream, data), or None if nothing is."""
        ack = self.acks.frame(now) if self.acks.deadline is not None else b""
        if not ack and not self.owed.credit and not self.send.lost and not probing:
            fast = self._new_data(now)
            if fast is not None:
                return fast
        parts, frames = [ack], []
        self.owed.credit_frame(parts, frames)
        room = self.payload - sum(map(len, parts))
        while room > 24:
            taken = self.send.take(room - 20, self.peer_limit)
            if taken is None:
                break
            offset, data = taken
            head = b"\x08" + _STREAM_HEAD(offset) + _STREAM_HEAD(len(data))
            parts.append(head)
            parts.append(data)
            frames.append(("s", offset, offset + len(data)))
            room -= len(head) + len(data)
            self.stats["stream_bytes_out"] += len(data)
        self.owed.closing_frames(parts, frames, room, probing)
        if not frames:
            return None
        if ack:
            self.acks.sent()
        datagram, _ = self._packet(b"".join(parts), now, frames)
        return datagram

    def _new_data(self, now):
        """The common packet, built the short way: one STREAM frame of new bytes and nothing else."""
        send = self.send
        offset = send.next
        end = min(send.end, self.peer_limit, offset + self.payload - 11)
        if offset >= end:
            return None
        send.next = end
        data = send._slice(offset, end)
        if offset < 1 << 30:
            head = _HEAD4.pack(0x08, offset | 0x80000000, (end - offset) | 0x4000)
        else:
            head = _HEAD8.pack(0x08, offset | 0xC000000000000000, (end - offset) | 0x4000)
        self.stats["stream_bytes_out"] += end - offset
        return self._packet(head + data, now, (("s", offset, end),))[0]

    def _packet(self, body, now, frames):
        datagram = self._seal(body, now)
        self.recovery.on_sent(Sent(self.sealer.next_pn - 1, now, len(datagram), frames), False)
        return datagram, self.sealer.next_pn - 1

    def _seal(self, body, now):
        _, datagram = self.sealer.seal(body)
        self.last_sent = now
        self.stats["sent_packets"] += 1
        self.stats["sent_bytes"] += len(datagram)
        return datagram


class Connection(Packets):
    def __init__(self, send_keys, recv_keys, addr, now, *, max_datagram=MAX_DATAGRAM, window=WINDOW,
                 idle_timeout=IDLE_TIMEOUT, pto_cap=PTO_CAP, random=os.urandom, migrate=True):
        self.sealer = udppackets.Sealer(send_keys)
        self.opener = udppackets.Opener(recv_keys)
        self.paths = Paths(addr, random)
        self.migrate = migrate  # follow the peer to a new address (the side that did not dial: the other knows)
        self.max_datagram = max_datagram
        self.payload = max_datagram - udppackets.OVERHEAD
        self.idle_timeout = idle_timeout
        self.events = collections.deque()
        self.send = SendBuffer()
        self.recv = RecvBuffer(window)
        self.send_limit = window  # buffered beyond this: the writer should pause
        self.peer_limit = window  # the peer's credit: we may send below this offset
        self.recovery = Recovery(MAX_ACK_DELAY, pto_cap, now)
        self.cc = BBR(max_datagram, now)
        self.state = "open"  # "closing" (we closed), "draining" (the peer did), "closed"
        self.close_at = None
        self.close_frame = None
        self.last_received = now
        self.last_sent = now
        self.next_send = now
        self.acks = Acks(now)
        self.owed = Owed(self.send, self.recv)
        self.probes = 0
        self.writable_wanted = False
        self.finished_told = False
        self.data_told = False  # a "data" event waits to be read
        self.stats = collections.Counter()

    # the application's side

    def write(self, data):
        self.send.write(data)
        if self.send.unacked >= self.send_limit:
            self.writable_wanted = True

    def finish(self):
        """No more bytes will be written: the peer learns the stream's final size."""
        if self.send.final is None:
            self.send.finish()
            self.owed.done = True

    def read(self):
        self.data_told = False
        data = self.recv.read()
        if data and self.recv.credit_due() is not None:
            self.owed.credit = True
        if self.recv.finished and not self.finished_told:
            self.finished_told = True
            self.events.append(("finished",))
        return data

    @property
    def all_acked(self):
        """Everything written, and the end of the stream, was acknowledged."""
        return self.send.all_acked and self.owed.done_acked

    def close(self, code=CODE_OK, reason="", now=None):
        """End the connection now: the peer is told (what was not acknowledged is dropped)."""
        if self.state != "open":
            return
        self.state = "closing"
        self.close_frame = udpframes.encode(udpframes.Close(code, reason))
        self.close_at = (now if now is not None else self.last_sent) + CLOSING_TIME
        self.events.append(("closed", code, reason, False))

    # the network's side

    def receive_datagram(self, data, addr, now):
        if self.state == "closed":
            return
        opened = self.opener.open(data)
        if opened is None:
            self.stats["dropped"] += 1
            return
        pn, plain = opened
        try:
            frames = udpframes.decode(plain)
        except udpframes.FrameError:
            self.stats["malformed"] += 1
            return
        self.last_received = now
        self.stats["received"] += 1
        if addr != self.paths.addr and self.migrate:
            self.paths.arrived(addr, pn == self.opener.window.highest, len(data))
        if self.state == "closing":
            self.acks.deadline = now  # answer with the close again
            return
        eliciting = False
        for frame in frames:
            if type(frame) is not udpframes.Ack:
                eliciting = True
            if self._frame(frame, addr, now) is False:
                return self.close(CODE_PROTOCOL, "a %s frame broke the rules" % type(frame).__name__, now)
            if self.state != "open":
                return
        self.acks.received(pn, eliciting, now)
        if not self.data_told and (self.recv.ready_bytes or self.recv.final is not None
                                   and self.recv.contig >= self.recv.final and not self.finished_told):
            self.data_told = True
            self.events.append(("data",))

    def _frame(self, frame, addr, now):
        kind = type(frame)
        if kind is udpframes.Stream:
            if not self.recv.add(frame.offset, frame.data):
                return False
            self.stats["stream_bytes_in"] += len(frame.data)
        elif kind is udpframes.Ack:
            self._on_ack(frame, now)
        elif kind is udpframes.Credit:
            self.peer_limit = max(self.peer_limit, frame.limit)
        elif kind is udpframes.Done:
            if not self.recv.set_final(frame.size):
                return False
        elif kind is udpframes.Challenge:
            self.paths.responses.append((frame.token, addr))
        elif kind is udpframes.Response:
            if self.paths.responded(frame.token, addr):
                self.events.append(("path", addr))
        elif kind is udpframes.Close:
            self.state = "draining"
            self.close_at = now + CLOSING_TIME
            self.events.append(("closed", frame.code, frame.reason, True))
        return True

    def _on_ack(self, frame, now):
        acked, lost, sample = self.recovery.on_ack(frame.ranges, frame.delay_us / 1e6, now)
        if not acked:
            return
        if self.recovery.latest_rtt is not None:
            self.cc.on_rtt(self.recovery.latest_rtt, now)
        self.owed.acked_packets(acked)
        self._on_lost(lost)
        self.cc.on_ack(sample, self.recovery.delivered, self.stats["sent_bytes"], self.recovery.in_flight, now,
                       sum(packet.size for packet in acked))
        if self.writable_wanted and self.send.unacked < self.send_limit // 2:
            self.writable_wanted = False
            self.events.append(("writable",))

    def _on_lost(self, lost):
        for packet in lost:
            self.cc.on_lost(packet.size)
            self.stats["lost_packets"] += 1
            self.owed.lost(packet.frames)

    # timers

    def get_timer(self):
        if self.state == "closed":
            return None
        if self.state != "open":
            return min(self.close_at, self.acks.deadline) if self.acks.deadline is not None else self.close_at
        times = [self.last_received + self.idle_timeout, self.last_sent + self.idle_timeout / 3,
                 self.acks.deadline, self.recovery.timer(), self.paths.timer()]
        if self.send.has_data(self.peer_limit) and self.recovery.in_flight + self.max_datagram <= self.cc.cwnd:
            times.append(self.next_send - PACING_QUANTUM)
        return min(t for t in times if t is not None)

    def handle_timer(self, now):
        if self.state != "open":
            if now >= self.close_at:
                self.state = "closed"
            return
        if now >= self.last_received + self.idle_timeout:
            self.close(CODE_IDLE, "the peer went silent for %d s" % self.idle_timeout, now)
            self.close_frame = None  # nobody is listening: nothing to send
            self.state = "closed"
            return
        if now >= self.last_sent + self.idle_timeout / 3:
            self.owed.ping = True
        lost, probe = self.recovery.on_timer(now)
        self._on_lost(lost)
        if probe:
            self.probes = 2
            self.stats["ptos"] += 1
            if not self.send.has_data(self.peer_limit):
                oldest = self.recovery.oldest()  # nothing new to probe with: the oldest data in flight again
                for item in oldest.frames if oldest is not None else ():
                    if item[0] == "s":
                        self.send.on_lost(item[1], item[2])

    # building datagrams

    def datagrams_to_send(self, now):
        """``[(datagram, addr), ...]`` to send now."""
        out = []
        if self.state != "open":
            if self.close_frame is not None and (self.acks.deadline is not None or not self.stats["close_sent"]):
                self.stats["close_sent"] += 1
                out.append((self._seal(self.close_frame, now), self.paths.addr))
            self.acks.deadline = None
            return out
        paths = self.paths
        out += paths.datagrams(lambda body: self._seal(body, now), now, self.recovery.pto_interval())
        while True:
            probing = self.probes > 0
            if not probing and (self.recovery.in_flight + self.max_datagram > self.cc.cwnd
                                or (self.cc.pacing_rate and self.next_send > now + PACING_QUANTUM)):
                break
            datagram = self._build(now, probing)
            if datagram is None:
                break
            out.append((datagram, paths.addr))
            if probing:
                self.probes -= 1
            if self.cc.pacing_rate:
                self.next_send = max(self.next_send, now - PACING_QUANTUM) + len(datagram) / self.cc.pacing_rate
        if self.acks.deadline is not None and self.acks.deadline <= now:
            out.append((self._seal(self.acks.frame(now), now), paths.addr))
            self.acks.sent()
        if not self.send.has_data(self.peer_limit) and not self.recovery.sent:
            self.recovery.mark_app_limited()
        return out
