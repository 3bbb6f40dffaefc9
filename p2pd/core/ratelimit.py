"""Per-source token buckets, pure: the caller passes ``now`` (seconds)."""

from collections import OrderedDict


class RateLimiter:
    """*rate* events per second per key with bursts of *burst*; at most *max_keys* keys remembered.

    :meth:`check` returns 0 when the event is allowed, else the whole seconds to wait (for Retry-After).
    A rate of 0 means unlimited.
    """

    def __init__(self, rate: float, burst: float, max_keys: int = 10000):
        self.rate = rate
        self.burst = max(burst, 1)
        self.max_keys = max_keys
        self.buckets = OrderedDict()  # key -> (tokens, last)

    def check(self, key, now: float) -> int:
        if not self.rate:
            return 0
        tokens, last = self.buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1
        if allowed:
            tokens -= 1
        self.buckets[key] = (tokens, now)
        if len(self.buckets) > self.max_keys:
            self.buckets.popitem(last=False)
        if allowed:
            return 0
        return max(1, int((1 - tokens) / self.rate + 0.999))


class Bucket:
    """One token bucket: *rate* tokens a second, at most *burst* saved. :meth:`take` spends *cost* tokens and
    returns 0, or the seconds until the debt it ran into is paid (the caller waits that long: backpressure, not
    refusal). Pure: the caller passes ``now``."""

    def __init__(self, rate: float, burst: float, now: float = 0.0):
        self.rate = rate
        self.burst = max(burst, 1)
        self.tokens = self.burst
        self.last = now

    def take(self, cost: float, now: float) -> float:
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        self.tokens -= cost
        if self.tokens >= 0 or not self.rate:
            return 0.0
        return -self.tokens / self.rate
