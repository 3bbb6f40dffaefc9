"""Calls that share one run: :class:`Shared` (a dial of a peer, a member-list lookup of a room, a mailbox fetch
asked for again while one runs all get the outcome of the one that runs); and :func:`patiently`, a registry
call asked again after the wait its 429 asks for."""

from twisted.internet import defer, task
from twisted.python.failure import Failure

from p2pd.errors import TooManyRequests

RATE_LIMIT_RETRIES = 4
MAX_RETRY_AFTER = 60.0


async def patiently(clock, call, *args, **kwargs):
    """``await call(*args, **kwargs)``, asked again after the ``Retry-After`` of a 429 (at most a minute), a few
    times at most; the last 429 is raised."""
    for attempt in range(RATE_LIMIT_RETRIES):
        try:
            return await call(*args, **kwargs)
        except TooManyRequests as e:
            if attempt == RATE_LIMIT_RETRIES - 1:
                raise
            await task.deferLater(clock, min(max(e.retry_after, 1), MAX_RETRY_AFTER), lambda: None)


class Shared:
    """``shared(key, start)``: a Deferred of the outcome of ``start()`` (a Deferred), started only if no call of
    *key* runs already; calls made meanwhile get the same outcome. ``key in shared`` while one runs."""

    def __init__(self):
        self.running = {}  # key -> [Deferred] waiting for the run in progress

    def __contains__(self, key):
        return key in self.running

    def __call__(self, key, start):
        waiter = defer.Deferred()
        if key in self.running:
            self.running[key].append(waiter)
            return waiter
        self.running[key] = [waiter]
        defer.maybeDeferred(start).addBoth(self._done, key)
        return waiter

    def _done(self, outcome, key):
        for waiter in self.running.pop(key, ()):
            if isinstance(outcome, Failure):
                waiter.errback(outcome)
            else:
                waiter.callback(outcome)
