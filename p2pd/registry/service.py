"""The registry process: HTTP API, STUN responder, store (embedded or external Redis), the pruner and the
memory watch, as child services of one MultiService built from the parsed options."""

import gc
import os

from twisted.application import service
from twisted.application.internet import TimerService
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from p2pd.datadir import write_info
from p2pd.errors import P2PDError, StoreUnavailable
from p2pd.listening import bound, describe, start_or_exit, stream_service, udp_service
from p2pd.registry.api import RegistryAPI
from p2pd.registry.http import make_site
from p2pd.registry.limits import RegistryLimits
from p2pd.registry.memory import POLL_INTERVAL, MemoryWatch
from p2pd.registry.redis_store import RedisStore

log = Logger()

PRUNE_INTERVAL = 15
ROOMS_PER_TICK = 200  # rooms the pruner looks at per tick: one page, so a tick stays short however many exist


class Pruner(TimerService):
    """Every few seconds: removes expired presence, releases names whose probation ran out, and looks at the next
    page of rooms (a cursor walks them all, page by page) for idle ones. An error is logged and the next tick
    still runs."""

    def __init__(self, store, clock, limits=RegistryLimits(), interval=PRUNE_INTERVAL, rooms_per_tick=ROOMS_PER_TICK):
        super().__init__(interval, self.tick)
        self.store = store
        self.clock = clock  # TimerService runs its LoopingCall on self.clock too
        self.limits = limits
        self.rooms_per_tick = rooms_per_tick
        self.cursor = None  # the last room looked at; None: start from the first
        self.worked = False  # a tick has reached the store: until then, at start, an unready store is no news

    @defer.inlineCallbacks
    def tick(self):
        now = int(self.clock.seconds() * 1000)
        limits = self.limits
        try:
            released = yield self.store.prune(now, limits.probation)
            if released:
                log.info("released {n} names that were never renewed after their claim", n=released)
            deleted, self.cursor = yield self.store.prune_rooms(now, self.cursor, self.rooms_per_tick,
                                                                limits.room_empty_expiry, limits.room_idle_expiry)
            if deleted:
                log.info("deleted idle rooms: {rooms}", rooms=", ".join(deleted))
            yield self.store.ensure_general(now)  # General comes back even if Redis lost it
            self.worked = True
        except Exception:
            self.failed(Failure())

    def failed(self, failure):
        if failure.check(StoreUnavailable):
            if self.worked:  # the first ticks of a start come before the embedded Redis answers: not a warning
                log.warn("pruning skipped: {error}", error=failure.value.message)
        else:
            log.failure("pruning expired registry state failed; the next tick will retry", failure)


class StoreService(service.Service):
    """Closes the store's connections on shutdown, before an embedded Redis is stopped."""

    def __init__(self, store):
        self.store = store

    def stopService(self):
        service.Service.stopService(self)
        return self.store.close()


class RegistryService(service.MultiService):
    def __init__(self, options, reactor):
        super().__init__()
        self.options = options
        self.reactor = reactor
        self.data_dir = options["data-dir"]
        self.embedded = None
        limits = options.get("limits") or RegistryLimits()
        redis_url = options["redis"]
        if not redis_url:
            from p2pd.registry.embedded_redis import EmbeddedRedis

            self.embedded = EmbeddedRedis(self.data_dir, reactor, maxmemory=limits.redis_maxmemory)
            self.embedded.setServiceParent(self)
            redis_url = self.embedded.url()
        self.redis_url = redis_url
        self.store = RedisStore(reactor)
        if self.embedded is None:
            self.store.connect(redis_url)
        StoreService(self.store).setServiceParent(self)
        self.memory = MemoryWatch(self.store, limits.mailbox_memory_share, limits.claims_memory_share)
        memory_poll = TimerService(POLL_INTERVAL, self.memory.poll)
        memory_poll.clock = reactor
        memory_poll.setServiceParent(self)
        self.api = RegistryAPI(self.store, reactor, lease_ttl=options["lease-ttl"], read_rate=options["read-rate"],
                               write_rate=options["write-rate"], limits=limits, memory=self.memory)
        self.http = stream_service(reactor, options["http"], make_site(self.api.resource()))
        self.http.setServiceParent(self)
        self.stun = None
        if options["stun-enabled"]:
            from p2pd.registry.stun import StunResponder

            self.stun = udp_service(reactor, options["stun-port"], StunResponder(reactor),
                                    options["stun-interface"])
            self.stun.setServiceParent(self)
        Pruner(self.store, reactor, limits).setServiceParent(self)

    def privilegedStartService(self):
        """twistd binds the listeners here, before any startService (so before redis-server is spawned): a busy
        port ends the process with one line, ``p2pd: cannot listen on ...``, and leaves nothing behind."""
        start_or_exit(super().privilegedStartService)

    def startService(self):
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        try:
            start_or_exit(super().startService)
        except P2PDError as e:
            raise SystemExit("p2pd: " + e.message)
        if self.embedded is None:
            self._ensure_general().addCallback(self._ready)
        else:
            self.embedded.whenReady().addCallbacks(self._redis_ready, self._redis_failed)

    def _redis_ready(self, url):
        """Connect only once the embedded Redis answers: never to a leftover server that is shutting down."""
        self.store.connect(url)
        return self._ensure_general().addCallback(self._ready)

    def _redis_failed(self, failure):
        log.critical("p2pd: the embedded Redis did not start: {error}", error=failure.getErrorMessage())
        self.reactor.stop()

    def _ready(self, _):
        """The store answers: learn its memory figures before announcing (the memory watch's first poll came too
        early, and until its next one nothing would be refused), then announce."""
        return self.memory.poll().addCallback(lambda _: self.announce())

    def _ensure_general(self):
        """Deferred that fires once room General exists, retrying every 0.5 s while Redis does not answer, so
        the registry announces itself only when General can be looked up."""

        def retry(failure):
            if not self.running:
                return None
            return task.deferLater(self.reactor, 0.5, self._ensure_general)

        return self.store.ensure_general(int(self.reactor.seconds() * 1000)).addErrback(retry)

    def announce(self):
        if not self.running:
            return
        # Everything built at startup lives as long as the process: keep it out of the cyclic GC's scans, which
        # otherwise walk ~100k long-lived objects on every full collection (tens of ms of latency each).
        gc.collect()
        gc.freeze()
        http = describe(bound(self.http))
        info = {"pid": os.getpid(), "http": "http://%s" % http, "api": "http://%s/v1/" % http,
                "stun": None, "redis": self.redis_url, "data_dir": self.data_dir}
        if self.stun is not None:
            info["stun"] = describe(bound(self.stun))
            self.api.stun_port = bound(self.stun).port
        write_info(os.path.join(self.data_dir, "registry.json"), info)
        log.info("p2pd registry listening: HTTP API {api} (OpenAPI: {api}openapi.json), STUN udp {stun}, "
                 "Redis {redis}, data dir {data_dir}", **info)
