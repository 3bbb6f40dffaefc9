"""The registry's store contract, and the in-memory implementation used by unit tests.

Every method returns a Deferred. Times are integer milliseconds since the epoch, passed in by the caller
(the store never reads a clock). Names and rooms are canonical. The same contract tests
(``tests/test_store_contract.py``) run against :class:`MemoryStore` and :class:`p2pd.registry.redis_store.RedisStore`.

Domain failures are raised as :mod:`p2pd.errors` exceptions: :class:`NameTaken` when a name is owned by
another key, :class:`NotFound`, :class:`Conflict` (room exists / already a member / not a member / mailbox full),
and :class:`StoreUnavailable` when the backing store does not answer.
"""

import bisect
from dataclasses import dataclass, field

from twisted.internet.defer import fail, succeed

from p2pd.errors import (AlreadyMember, MailboxFull, NameTaken, NoSuchPeer, NoSuchRoom, NotMember, P2PDError,
                         RoomExists, StoreUnavailable)

GENERAL = "general"  # canonical name of the room everyone is in
GENERAL_DISPLAY = "General"


@dataclass
class PeerEntry:
    name: str
    key: str
    record: dict
    lease: int = 0  # lease expiry (ms); online iff lease > now

    def online(self, now_ms: int) -> bool:
        return self.lease > now_ms


@dataclass
class RoomEntry:
    name: str  # canonical
    record: dict  # {"name": display, "creator": ..., "created_at": ...}
    members: list = field(default_factory=list)


def room_not_found(room):
    return NoSuchRoom("room %s does not exist" % room)


def general_record(now_ms: int) -> dict:
    return {"name": GENERAL_DISPLAY, "creator": None, "created_at": now_ms}


def _deferred(method):
    """Run a synchronous implementation and hand back its result or P2PDError as a Deferred."""

    def wrapper(*args, **kwargs):
        try:
            return succeed(method(*args, **kwargs))
        except P2PDError as e:
            return fail(e)

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


class MemoryStore:
    """Dictionaries with the same semantics as the Redis store; for unit tests and model checking."""

    def __init__(self):
        self.peers = {}  # name -> PeerEntry
        self.nonces = {}  # (name, nonce) -> expiry ms
        self.rooms = {GENERAL: RoomEntry(GENERAL, general_record(0))}
        self.members = {GENERAL: set()}
        self.mailboxes = {}  # name -> {id: (expiry, message)}
        self.available = True

    def _check(self):
        if not self.available:
            raise StoreUnavailable("the registry's store is unavailable")

    @_deferred
    def ping(self):
        self._check()

    @_deferred
    def register(self, name, key, record, now_ms, ttl):
        """Claim *name* for *key* if free (True) or update it (False); NameTaken for another key."""
        self._check()
        entry = self.peers.get(name)
        if entry is not None and entry.key != key:
            raise NameTaken("name %s is owned by another key" % name)
        created = entry is None
        if created:
            entry = self.peers[name] = PeerEntry(name, key, record)
            self.members[GENERAL].add(name)
        entry.record = record
        entry.lease = now_ms + ttl * 1000
        return created

    @_deferred
    def get_peer(self, name):
        self._check()
        return self.peers.get(name)

    @_deferred
    def heartbeat(self, name, now_ms, ttl):
        self._check()
        entry = self.peers.get(name)
        if entry is None:
            raise NoSuchPeer("unknown peer %s" % name)
        entry.lease = now_ms + ttl * 1000
        return entry.lease

    @_deferred
    def set_offline(self, name):
        self._check()
        entry = self.peers.get(name)
        if entry is not None:
            entry.lease = 0

    @_deferred
    def release(self, name):
        """Forget *name* entirely: ownership, record, presence, room memberships, mailbox."""
        self._check()
        self.peers.pop(name, None)
        self.mailboxes.pop(name, None)
        for members in self.members.values():
            members.discard(name)

    @_deferred
    def list_online(self, now_ms, after, limit):
        """Online peers with names > *after*, by name; and the cursor of the next page (or None)."""
        self._check()
        names = sorted(n for n, e in self.peers.items() if e.lease > now_ms and n > (after or ""))
        page = [self.peers[n] for n in names[:limit]]
        return page, (page[-1].name if len(names) > limit else None)

    @_deferred
    def use_nonce(self, name, nonce, now_ms, ttl):
        """True the first time (name, nonce) is seen within *ttl* seconds, False for a replay."""
        self._check()
        expiry = self.nonces.get((name, nonce))
        if expiry is not None and expiry > now_ms:
            return False
        self.nonces[(name, nonce)] = now_ms + ttl * 1000
        return True

    @_deferred
    def create_room(self, room, record):
        self._check()
        if room in self.rooms:
            raise RoomExists("room %s already exists" % self.rooms[room].record["name"])
        self.rooms[room] = RoomEntry(room, record)
        self.members[room] = set()

    @_deferred
    def get_room(self, room):
        self._check()
        entry = self.rooms.get(room)
        if entry is None:
            return None
        return RoomEntry(room, entry.record, sorted(self.members[room]))

    @_deferred
    def list_rooms(self, after, limit):
        self._check()
        names = sorted(self.rooms)
        names = names[bisect.bisect_right(names, after or ""):]
        page = [RoomEntry(n, self.rooms[n].record, sorted(self.members[n])) for n in names[:limit]]
        return page, (page[-1].name if len(names) > limit else None)

    @_deferred
    def join_room(self, room, name):
        self._check()
        if room not in self.rooms:
            raise room_not_found(room)
        if name in self.members[room]:
            raise AlreadyMember("%s is already a member of %s" % (name, self.rooms[room].record["name"]))
        self.members[room].add(name)

    @_deferred
    def leave_room(self, room, name):
        self._check()
        if room not in self.rooms:
            raise room_not_found(room)
        if name not in self.members[room]:
            raise NotMember("%s is not a member of %s" % (name, self.rooms[room].record["name"]))
        self.members[room].discard(name)

    @_deferred
    def deposit(self, recipient, message, now_ms, ttl, max_count, max_per_sender=None):
        """Store *message* (a dict with an ``id`` and ``from``) for *recipient* until read or *ttl* seconds
        pass; MailboxFull past *max_count* messages, or *max_per_sender* from one sender."""
        self._check()
        box = self.mailboxes.setdefault(recipient, {})
        for msg_id in [i for i, (exp, _) in box.items() if exp <= now_ms]:
            del box[msg_id]
        if len(box) >= max_count:
            raise MailboxFull("the mailbox of %s is full (%d messages)" % (recipient, max_count))
        if max_per_sender is not None and \
                sum(1 for _, m in box.values() if m.get("from") == message.get("from")) >= max_per_sender:
            raise MailboxFull("the mailbox of %s holds %d messages from you already" % (recipient, max_per_sender))
        box[message["id"]] = (now_ms + ttl * 1000, message)

    @_deferred
    def fetch(self, recipient, now_ms, limit):
        """Up to *limit* unexpired messages for *recipient*, oldest first."""
        self._check()
        box = self.mailboxes.get(recipient, {})
        live = sorted((exp, m["id"], m) for exp, m in box.values() if exp > now_ms)
        return [m for _, _, m in live[:limit]]

    @_deferred
    def ack(self, recipient, ids):
        """Delete the given messages; the number actually deleted."""
        self._check()
        box = self.mailboxes.get(recipient, {})
        return sum(1 for i in ids if box.pop(i, None) is not None)

    @_deferred
    def prune(self, now_ms):
        """Drop expired nonces and mailbox entries; online-ness is derived from the lease, never stored."""
        self._check()
        for key in [k for k, exp in self.nonces.items() if exp <= now_ms]:
            del self.nonces[key]
        for box in self.mailboxes.values():
            for msg_id in [i for i, (exp, _) in box.items() if exp <= now_ms]:
                del box[msg_id]
        return 0
