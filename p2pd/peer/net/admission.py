"""How many connections that have not proved who they are a peer holds at once: :class:`Admission`.

A connection is *pending* from the moment it is accepted until it is a verified link (its peer's key checked
against the registry and our pin) or a data connection its session id claimed. Pending connections cost a
descriptor each and are bounded in total and per source address; past the bound a new connection is closed as
soon as it is accepted, so a flood of connections that never finish their handshake (a byte and silence) can
neither exhaust the descriptors nor crowd out peers that do. Every pending connection also has a deadline (the
demux's and the handshake's timeouts), so the slots come back."""

from twisted.logger import Logger

from p2pd.core.ratelimit import RateLimiter

log = Logger()

MAX_PENDING = 256  # connections not yet verified, in all
MAX_PENDING_PER_HOST = 64  # of those, from one source address
NEW_PER_SECOND = 20  # new connections per second from one source address (bursts of NEW_BURST)
NEW_BURST = 64
REFUSAL_LOG_EVERY = 60.0  # seconds between two log lines about refused connections


class Admission:
    """Pending slots in all and per source address, and a rate of new connections per source address (each
    costs a TLS handshake and, for a name we have no pin for, a registry lookup)."""

    def __init__(self, clock, total=MAX_PENDING, per_host=MAX_PENDING_PER_HOST, rate=NEW_PER_SECOND,
                 burst=NEW_BURST):
        self.clock = clock
        self.total = total
        self.per_host = per_host
        self.rate = RateLimiter(rate, burst)
        self.pending = 0
        self.by_host = {}  # source address -> pending connections from it
        self.refused = 0  # connections refused since the last log line
        self._logged_at = None

    def enter(self, host):
        """Take a pending slot for a connection from *host*; False (and the connection is to be closed) if
        there is none."""
        held = self.by_host.get(host, 0)
        if self.pending >= self.total or held >= self.per_host or self.rate.check(host, self.clock.seconds()):
            self._refusal(host)
            return False
        self.pending += 1
        self.by_host[host] = held + 1
        return True

    def leave(self, host):
        """Give back the slot of a connection from *host* (it was verified, or it closed)."""
        held = self.by_host.get(host, 0)
        if held <= 0:
            return
        self.pending -= 1
        if held == 1:
            del self.by_host[host]
        else:
            self.by_host[host] = held - 1

    def _refusal(self, host):
        self.refused += 1
        now = self.clock.seconds()
        if self._logged_at is None or now - self._logged_at >= REFUSAL_LOG_EVERY:
            log.warn("refused {n} connection(s) past the limits on unverified connections ({total} in all, "
                     "{per_host} per address, {rate:g} new per second per address; the last from {host})",
                     n=self.refused, total=self.total, per_host=self.per_host, rate=self.rate.rate, host=host)
            self.refused = 0
            self._logged_at = now
