"""How full the registry's Redis is, and what it refuses because of it (issue 12, item 7).

Redis runs with ``maxmemory`` and ``noeviction``: it never drops a claim to make room, it refuses writes instead,
heartbeats included. So the registry stops what grows the store well before that point: above
``mailbox-memory-share`` of maxmemory new mailbox deposits get 507 ``registry_full``, above
``claims-memory-share`` new names and new rooms too. Heartbeats, updates of existing claims, joins, acks, fetches
and reads are always served; they need (almost) no new memory, and that headroom is kept for them.

:class:`MemoryWatch` asks Redis (``INFO memory``) every few seconds, from the service's timer, never per
request. Between two polls it adds what it let in (the bytes of each deposit), so a burst cannot run far past
the share before the next poll sees it. With no maxmemory (an external Redis without one, or one whose INFO the
registry may not read) it refuses nothing, and says so once in the log.
"""

from twisted.internet import defer
from twisted.logger import Logger

from p2pd.core.sizes import human_size
from p2pd.errors import RegistryFull, StoreUnavailable

log = Logger()

POLL_INTERVAL = 2.0  # seconds between two INFO memory polls
RETRY_AFTER = 60  # seconds a refused client is told to wait: mailboxes drain as their owners fetch
OVERHEAD = 256  # bytes Redis spends on one deposit beyond its JSON (keys, zset entries), for the estimate


class MemoryWatch:
    """The last known memory use of the store and the refusals that follow from it."""

    def __init__(self, store, mailbox_share=0.75, claims_share=0.9):
        self.store = store
        self.mailbox_share = mailbox_share
        self.claims_share = claims_share
        self.used = 0  # bytes, at the last poll plus what was let in since
        self.max = 0  # Redis' maxmemory; 0 while unknown or unlimited: nothing is refused
        self.told = set()  # what was logged once already

    @defer.inlineCallbacks
    def poll(self):
        """Ask the store how much memory it uses; a store that does not answer leaves the last figures (its
        outage is logged by the store's client), any other trouble is logged and the next poll tries again."""
        try:
            info = yield self.store.memory()
        except StoreUnavailable:
            return
        except Exception:
            log.failure("could not read Redis' memory use; the last figures stand")
            return
        self.used, self.max = info["used"], info["max"]
        if not self.max:
            self._once("unlimited", "Redis has no maxmemory: the registry refuses nothing for memory (set one, with "
                                    "maxmemory-policy noeviction, to keep room for claims and heartbeats)")
        elif info["policy"] != "noeviction":
            self._once("policy", "Redis' maxmemory-policy is %s: at its maxmemory it may evict claims; "
                                 "noeviction is what the registry expects" % info["policy"])

    def _once(self, what, message):
        if what not in self.told:
            self.told.add(what)
            log.warn("{message}", message=message)

    def share(self) -> float:
        return self.used / self.max if self.max else 0.0

    def admit_deposit(self, size: int):
        """RegistryFull above the mailbox share; else count *size* bytes as used until the next poll."""
        self._refuse_above(self.mailbox_share, "mailbox deposits")
        self.used += size + OVERHEAD

    def admit_claim(self, what="new names and rooms"):
        """RegistryFull above the claims share."""
        self._refuse_above(self.claims_share, what)

    def _refuse_above(self, share, what):
        if self.max and self.used > share * self.max:
            raise RegistryFull("the registry is nearly full (%s of %s in use): it takes no %s for now; retry in %d s"
                               % (human_size(self.used), human_size(self.max), what, RETRY_AFTER),
                               retry_after=RETRY_AFTER)
