"""Loss detection and round-trip estimation for the UDP stream, after RFC 9002, with delivery-rate samples for
the congestion controller (:mod:`p2pd.core.udpcc`).

A packet is lost when one sent at least ``PACKET_THRESHOLD`` later was acknowledged, or when it is older than
9/8 of the round trip and a later one was acknowledged (RFC 9002 section 6.1). When nothing acknowledges, the
probe timeout (``srtt + 4 rttvar + max_ack_delay``, doubled after each probe that went unanswered) sends probes;
the doubling is capped at ``pto_cap`` seconds, so that after a blackout of a few seconds the path is tried again
within one capped interval (a probe every ``pto_cap`` while it lasts), not after an ever longer silence. What a
lost packet carried goes again in a new packet: packet numbers are never reused, so every RTT sample is exact.
"""

from p2pd.core.udpcc import RateSample

PACKET_THRESHOLD = 3
TIME_THRESHOLD = 9 / 8
GRANULARITY = 0.001
INITIAL_RTT = 0.1


class Sent:
    """One ack-eliciting packet in flight and what it carried (``frames``: what to send again if it is lost)."""

    __slots__ = ("pn", "time", "size", "frames", "delivered", "delivered_time", "first_sent_time",
                 "app_limited")

    def __init__(self, pn, time, size, frames):
        self.pn = pn
        self.time = time
        self.size = size
        self.frames = frames


class Recovery:
    def __init__(self, max_ack_delay, pto_cap, now):
        self.max_ack_delay = max_ack_delay
        self.pto_cap = pto_cap
        self.sent = {}  # pn -> Sent, in the order sent
        self.in_flight = 0  # bytes
        self.largest_acked = -1
        self.latest_rtt = None
        self.srtt = None
        self.rttvar = None
        self.min_rtt = None
        self.pto_count = 0
        self.last_eliciting_time = None
        self.loss_time = None
        # delivery-rate state (draft-cheng-iccrg-delivery-rate-estimation)
        self.delivered = 0
        self.delivered_time = now
        self.first_sent_time = now
        self.app_limited_until = 0  # samples from packets sent before this much was delivered are app-limited
        self.lost_packets = 0
        self.packet_threshold = PACKET_THRESHOLD
        self.time_threshold = TIME_THRESHOLD
        self.declared = {}  # pn -> when it was declared lost, for a while: an ACK of one means reordering
        self.spurious = 0
        self.lost_bytes = 0

    # sending

    def on_sent(self, packet: Sent, app_limited):
        if not self.sent:
            self.first_sent_time = self.delivered_time = packet.time
        packet.delivered = self.delivered
        packet.delivered_time = self.delivered_time
        packet.first_sent_time = self.first_sent_time
        packet.app_limited = app_limited
        self.sent[packet.pn] = packet
        self.in_flight += packet.size
        self.last_eliciting_time = packet.time

    def mark_app_limited(self):
        self.app_limited_until = self.delivered + self.in_flight or 1

    # acknowledgements

    def on_ack(self, ranges, ack_delay, now):
        """``(acked, lost, sample)`` for an ACK of *ranges* (``(first, last)``, highest first)."""
        acked = []
        sent = self.sent
        for first, last in ranges:
            if last - first < len(sent):
                for pn in range(last, first - 1, -1):
                    packet = sent.pop(pn, None)
                    if packet is not None:
                        acked.append(packet)
            else:
                for pn in [pn for pn in sent if first <= pn <= last]:
                    acked.append(sent.pop(pn))
        if self.declared:
            self._spurious(ranges)
        if not acked:
            return [], [], None
        acked.sort(key=lambda p: p.pn)
        newest = acked[-1]
        if newest.pn > self.largest_acked:
            self.largest_acked = newest.pn
            self._rtt_sample(now - newest.time, ack_delay)
        sample = None
        for packet in acked:
            self.in_flight -= packet.size
            self.delivered += packet.size
            self.delivered_time = now
            self.first_sent_time = packet.time
            interval = max(packet.time - packet.first_sent_time, now - packet.delivered_time)
            if sample is None or packet.delivered >= sample.prior_delivered:
                sample = RateSample(self.delivered - packet.delivered, interval, packet.delivered,
                                    packet.delivered < self.app_limited_until)
        self.pto_count = 0
        return acked, self.detect_lost(now), sample

    def _spurious(self, ranges):
        """ACKs of packets declared lost: the path reorders. Widen the thresholds (RFC 9002 section 6.1 allows
        adapting them, as RACK does) so that reordering stops costing retransmissions."""
        declared = self.declared
        for first, last in ranges:
            if last - first < len(declared):
                found = [pn for pn in range(first, last + 1) if pn in declared]
            else:
                found = [pn for pn in declared if first <= pn <= last]
            for pn in found:
                del declared[pn]
                self.spurious += 1
                self.packet_threshold = min(max(self.packet_threshold, self.largest_acked - pn + 1), 64)
                self.time_threshold = min(self.time_threshold * 1.125, 2.0)
        while len(declared) > 1024:  # the oldest cannot be reordered any more: forget them
            del declared[next(iter(declared))]

    def _rtt_sample(self, rtt, ack_delay):
        rtt = max(rtt, GRANULARITY / 10)
        self.latest_rtt = rtt
        if self.min_rtt is None or rtt < self.min_rtt:
            self.min_rtt = rtt
        adjusted = rtt - ack_delay if rtt - ack_delay >= self.min_rtt else rtt
        if self.srtt is None:
            self.srtt = adjusted
            self.rttvar = adjusted / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - adjusted)
            self.srtt = 0.875 * self.srtt + 0.125 * adjusted

    def detect_lost(self, now):
        """The packets now deemed lost (removed from flight); sets the loss timer for the next candidate."""
        self.loss_time = None
        if self.largest_acked < 0:
            return []
        rtt = max(self.latest_rtt or INITIAL_RTT, self.srtt or INITIAL_RTT)
        delay = max(self.time_threshold * rtt, GRANULARITY)
        lost = []
        for pn, packet in self.sent.items():
            if pn > self.largest_acked:
                break
            if pn <= self.largest_acked - self.packet_threshold or packet.time + delay <= now:
                lost.append(packet)
            else:
                when = packet.time + delay
                self.loss_time = when if self.loss_time is None else min(self.loss_time, when)
        for packet in lost:
            del self.sent[packet.pn]
            self.declared[packet.pn] = now
            self.in_flight -= packet.size
            self.lost_bytes += packet.size
        self.lost_packets += len(lost)
        return lost

    # timers

    def pto_interval(self):
        srtt = self.srtt if self.srtt is not None else INITIAL_RTT
        rttvar = self.rttvar if self.rttvar is not None else INITIAL_RTT / 2
        base = srtt + max(4 * rttvar, GRANULARITY) + self.max_ack_delay
        return min(base * (1 << min(self.pto_count, 16)), max(self.pto_cap, base))

    def timer(self):
        """When recovery needs to run next (the loss timer, else the probe timeout), or None."""
        if self.loss_time is not None:
            return self.loss_time
        if not self.sent or self.last_eliciting_time is None:
            return None
        return self.last_eliciting_time + self.pto_interval()

    def on_timer(self, now):
        """``(lost, probe)``: packets lost by the time threshold, or True if a probe is due (the PTO)."""
        if self.loss_time is not None:
            if now >= self.loss_time:
                return self.detect_lost(now), False
            return [], False
        deadline = self.timer()
        if deadline is None or now < deadline:
            return [], False
        self.pto_count += 1
        self.last_eliciting_time = now
        return [], True

    def oldest(self):
        """The oldest packet in flight (what a probe sends again), or None."""
        return next(iter(self.sent.values()), None)
