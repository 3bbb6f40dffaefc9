"""Keeps the daemon's name registered and its presence lease alive.

Registers at start, heartbeats every third of the lease, registers again when the registry has forgotten us
(it answers ``unknown_signer``, e.g. after its Redis lost data), backs off while the registry is unreachable
(the daemon keeps serving the peers it knows meanwhile), honours ``Retry-After``, and marks itself offline on a
clean stop. A name owned by another key is fatal: the daemon stops at once with a clear message.
"""

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from p2pd.errors import Conflict, Forbidden, P2PDError, RetryLater, Unauthorized

log = Logger()

MIN_BACKOFF = 1.0
MAX_BACKOFF = 30.0


class Presence(service.Service):
    def __init__(self, daemon, registry, clock, on_fatal, interval=20.0):
        self.daemon = daemon
        self.registry = registry
        self.clock = clock
        self.on_fatal = on_fatal
        self.interval = interval
        self.registered = False
        self.backoff = MIN_BACKOFF
        self._call = None
        self._busy = None

    def startService(self):
        super().startService()
        self._schedule(0)

    @defer.inlineCallbacks
    def stopService(self):
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        if self._busy is not None:
            self._busy.cancel()
        if self.registered:
            try:
                yield self.registry.go_offline().addTimeout(3, self.clock)
            except Exception as e:
                log.info("could not mark ourselves offline: {error}", error=e)

    def _schedule(self, delay):
        if self.running:
            self._call = self.clock.callLater(delay, self._tick)

    def _tick(self):
        self._call = None
        self._busy = defer.ensureDeferred(self._step())
        self._busy.addErrback(lambda f: f.trap(defer.CancelledError))

    async def _step(self):
        try:
            if not self.registered:
                record = await self.daemon.register()
                self.registered = True
                self.interval = self.daemon.heartbeat_interval(record)
                log.info("registered as {name} at {url}", name=self.daemon.name, url=self.registry.base)
                self.daemon.registry_changed("online", "registered")
            else:
                await self.registry.heartbeat()
                self.daemon.registry_changed("online", "heartbeat")
            self.backoff = MIN_BACKOFF
            self._schedule(self.interval)
        except defer.CancelledError:
            raise
        except Unauthorized as e:
            if e.code == "unknown_signer":
                log.info("the registry forgot us; registering again")
                self.registered = False
                self._schedule(0)
            else:
                self._retry("registry refused our signature: %s" % e.message)
        except Conflict as e:
            if e.code == "name_taken":
                self.on_fatal("the name %s belongs to another key at %s; choose another --name"
                              % (self.daemon.name, self.registry.base))
            else:
                self._retry(e.message)
        except Forbidden as e:
            if e.code == "too_many_names":  # this key owns as many names as the registry allows: nothing to wait for
                self.on_fatal("%s: %s; choose a name this key already owns, or release one" % (
                    self.registry.base, e.message))
            else:
                self._retry(e.message)
        except RetryLater as e:  # rate-limited, too many new names from this address, or the registry nearly full
            self._retry(e.message, delay=e.retry_after)
        except P2PDError as e:
            self._retry(e.message)
        except Exception as e:  # connection refused, DNS, timeouts: the registry is unreachable
            self._retry("%s: %s" % (type(e).__name__, e))

    def _retry(self, message, delay=None):
        delay = delay if delay is not None else self.backoff
        self.backoff = min(self.backoff * 2, MAX_BACKOFF)
        log.warn("registry unreachable ({message}); retrying in {delay:.0f} s", message=message, delay=delay)
        self.daemon.registry_changed("unreachable", message)
        self._schedule(delay)
