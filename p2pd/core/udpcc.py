"""Congestion control for the UDP stream: a delivery-rate model in the manner of BBR, paced.

Loss-based controllers (NewReno, CUBIC) read every loss as congestion: on a path that drops 20% of datagrams at
random they halve their window again and again, and aioquic's deliver about half a megabit per second through a
10 Mbit/s link that loses 20%. This controller estimates the path instead:

- the bottleneck bandwidth is the largest delivery rate sampled over the last ``BW_ROUNDS`` round trips (a
  sample is bytes acknowledged over the time they took, per draft-cheng-iccrg-delivery-rate-estimation);
- the minimum round trip over the last ``MIN_RTT_WINDOW`` seconds;
- sending is paced at ``gain x bandwidth``: a startup that doubles per round trip until the bandwidth stops
  growing by 25% for three rounds, a drain of the queue that made, then a cycle of gains (1.25 to probe for more,
  0.75 to drain what the probe queued, 1 for six rounds); the window is ``CWND_GAIN`` bandwidth-delay products.

Random loss does not move these estimates. Loss answers only when a probing round (gain 1.25) loses more than
``LOSS_THRESH`` of what it sent and clearly more than the path's background loss (measured in the rounds at gain
1: loss that does not grow with the rate is not a queue overflowing). Then the window's upper bound is cut by
``BETA``, but never below one bandwidth-delay product grossed up by the background loss (the floor BBRv3 keeps,
without which a random-loss path spirals down to nothing), and lifted again after rounds without such loss.

Times are seconds (floats) passed in by the caller; sizes are bytes. No I/O.
"""

STARTUP_GAIN = 2.885  # 2 / ln 2
CYCLE = (1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
CWND_GAIN = 2.0
BW_ROUNDS = 10
MIN_RTT_WINDOW = 10.0
LOSS_THRESH = 0.02
BETA = 0.7
MIN_CWND_PACKETS = 4
INITIAL_CWND_PACKETS = 32
MIN_ROUND_PACKETS = 20  # a round that sent fewer says nothing of its loss rate: it joins the next one
MAX_AGGREGATION = 0.02  # seconds of bandwidth the window may add for ACKs that come in bursts


class RateSample:
    """What one acknowledgement says of the delivery rate."""

    __slots__ = ("delivered", "interval", "prior_delivered", "app_limited")

    def __init__(self, delivered, interval, prior_delivered, app_limited):
        self.delivered = delivered
        self.interval = interval
        self.prior_delivered = prior_delivered
        self.app_limited = app_limited

    @property
    def rate(self):
        return self.delivered / self.interval if self.interval > 0 else 0.0


class MaxFilter:
    """The largest value seen in the last *span* rounds (a value per round, the rounds counted by the caller)."""

    def __init__(self, span):
        self.span = span
        self.best = {}  # round -> the largest value in it

    def update(self, value, round_count):
        if value > self.best.get(round_count, 0.0):
            self.best[round_count] = value
        for old in [r for r in self.best if r <= round_count - self.span]:
            del self.best[old]

    @property
    def value(self):
        return max(self.best.values(), default=0.0)


class BBR:
    def __init__(self, max_datagram, now):
        self.mss = max_datagram
        self.bw = MaxFilter(BW_ROUNDS)
        self.min_rtt = None
        self.min_rtt_at = now
        self.state = "startup"
        self.round_count = 0
        self.next_round_delivered = 0
        self.full_bw = 0.0
        self.full_bw_rounds = 0
        self.cycle_index = 0
        self.cycle_start = now
        self.inflight_hi = float("inf")
        self.round_lost = 0
        self.round_sent_start = 0  # bytes sent when the round began
        self.background = 0.0  # the loss rate of rounds at cruise: random loss, not congestion
        self.clean_rounds = 0
        self.pacing_gain = STARTUP_GAIN
        self.cwnd_gain = STARTUP_GAIN
        self.cwnd = INITIAL_CWND_PACKETS * max_datagram
        self.pacing_rate = 0.0  # bytes per second; 0 until there is a round trip to base it on
        self.extra = MaxFilter(BW_ROUNDS)  # ACK aggregation: bytes acknowledged beyond what bw explains
        self.epoch_start = now
        self.epoch_acked = 0

    # what the connection tells it

    def on_rtt(self, rtt, now):
        if self.min_rtt is None or rtt <= self.min_rtt or now - self.min_rtt_at > MIN_RTT_WINDOW:
            self.min_rtt = rtt
            self.min_rtt_at = now
        if self.pacing_rate == 0.0:
            self.pacing_rate = STARTUP_GAIN * self.cwnd / max(rtt, 1e-3)

    def on_lost(self, size):
        self.round_lost += size

    def on_ack(self, sample: RateSample, delivered, sent_total, inflight, now, acked=0):
        """After an ACK: *sample* its rate sample (or None), *delivered* the bytes acknowledged so far,
        *sent_total* the bytes sent so far, *inflight* what is still unacknowledged."""
        new_round = sample is not None and sample.prior_delivered >= self.next_round_delivered
        if new_round:
            self.next_round_delivered = delivered
            self.round_count += 1
            self._end_round(sent_total, inflight)
        if sample is not None and sample.interval > 0 and (not sample.app_limited or sample.rate > self.bw.value):
            self.bw.update(sample.rate, self.round_count)
        self._aggregation(acked, now)
        if self.state == "startup" and new_round:
            self._check_full_bw()
        if self.state == "drain" and inflight <= self.bdp():
            self._enter_probe_bw(now)
        if self.state == "probe_bw":
            self._advance_cycle(inflight, now)
        self._set_rates()

    # the model

    def bdp(self):
        bw = self.bw.value
        if bw <= 0 or self.min_rtt is None:
            return INITIAL_CWND_PACKETS * self.mss
        return bw * self.min_rtt

    def _aggregation(self, acked, now):
        """How far ACKs run ahead of the bandwidth (an ACK every few packets, a receiver that reads in bursts, a
        busy loop at either end): the window needs that much on top of the BDP, or it starves its own sender."""
        bw = self.bw.value
        expected = bw * (now - self.epoch_start)
        if self.epoch_acked <= expected:
            self.epoch_start, self.epoch_acked, expected = now, 0, 0.0
        self.epoch_acked += acked
        if self.state != "startup":  # while the estimate still grows, everything looks like aggregation
            self.extra.update(min(self.epoch_acked - expected, self.cwnd, bw * MAX_AGGREGATION), self.round_count)

    def _end_round(self, sent_total, inflight):
        """A round trip ended: compare its loss with the path's background loss (what it loses at cruise)."""
        sent = sent_total - self.round_sent_start
        rate = self.round_lost / max(sent, 1)
        if sent < MIN_ROUND_PACKETS * self.mss:  # too few packets to tell a loss rate from noise: fold it in
            return
        self.round_lost = 0
        self.round_sent_start = sent_total
        if self.state != "probe_bw":
            return
        if self.pacing_gain == 1.0:
            self.background = 0.9 * self.background + 0.1 * min(rate, 0.5)
        congested = self.pacing_gain > 1.0 and rate > max(LOSS_THRESH, 1.5 * self.background + 0.01)
        if congested:  # the probe overflowed a queue: back off, but never below what the path carries
            floor = (self.bdp() + self.extra.value) / (1 - self.background)
            self.inflight_hi = max(BETA * min(inflight, self.inflight_hi), floor)
            self.clean_rounds = 0
            self.cycle_index = 0  # the 0.75 round that drains what the probe queued comes next
            self.cycle_start = -1e9
        elif self.inflight_hi != float("inf"):
            self.clean_rounds += 1
            if self.clean_rounds >= 4:
                self.inflight_hi *= 1.25
                if self.inflight_hi > 4 * CWND_GAIN * self.bdp():
                    self.inflight_hi = float("inf")

    def _check_full_bw(self):
        bw = self.bw.value
        if bw >= 1.25 * self.full_bw:
            self.full_bw = bw
            self.full_bw_rounds = 0
            return
        self.full_bw_rounds += 1
        if self.full_bw_rounds >= 3:
            self.state = "drain"
            self.pacing_gain = 1 / STARTUP_GAIN
            self.cwnd_gain = STARTUP_GAIN

    def _enter_probe_bw(self, now):
        self.state = "probe_bw"
        self.cwnd_gain = CWND_GAIN
        self.cycle_index = 2  # start cruising: a probe follows in a few rounds
        self.cycle_start = now
        self.pacing_gain = CYCLE[self.cycle_index]

    def _advance_cycle(self, inflight, now):
        elapsed = now - self.cycle_start > (self.min_rtt or 0.0)
        gain = self.pacing_gain
        if gain > 1.0:
            done = elapsed and inflight >= gain * self.bdp()
            done = done or now - self.cycle_start > 2 * (self.min_rtt or 0.0)
        elif gain < 1.0:
            done = elapsed or inflight <= self.bdp()
        else:
            done = elapsed
        if done:
            self.cycle_index = (self.cycle_index + 1) % len(CYCLE)
            self.cycle_start = now
            self.pacing_gain = CYCLE[self.cycle_index]

    def _set_rates(self):
        bw = self.bw.value
        if bw > 0:
            rate = self.pacing_gain * bw
            if self.state != "startup" or rate > self.pacing_rate:
                self.pacing_rate = rate
            cwnd = self.cwnd_gain * self.bdp() + 2 * self.extra.value
            self.cwnd = max(min(cwnd, self.inflight_hi), MIN_CWND_PACKETS * self.mss)
            if self.state == "startup":
                self.cwnd = max(self.cwnd, INITIAL_CWND_PACKETS * self.mss)
