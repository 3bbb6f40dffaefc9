"""The registry's store contract, and the in-memory implementation used by unit tests.

Every method returns a Deferred. Times are integer milliseconds since the epoch, passed in by the caller
(the store never reads a clock). Names and rooms are canonical. The same contract tests
(``tests/test_store_contract.py``) run against :class:`MemoryStore` and :class:`p2pd.registry.redis_store.RedisStore`.

Quotas are passed in by the caller (the store knows no defaults): ``max_names`` per key on register,
``max_rooms`` per owner on create_room, the mailbox bounds on deposit, the probation and room expiries on prune.

* **Probation.** A name's first claim puts it on probation; a heartbeat, or a registration by its owner once its
  lease has run out, ends it. :meth:`MemoryStore.prune` releases a name still on probation whose lease has been
  over for the given seconds, as completely as :meth:`MemoryStore.release` does.
* **Rooms** are owned by their creator until it releases its name; then by nobody, and the room lives on until it
  is idle: :meth:`MemoryStore.prune_rooms` walks the rooms a page at a time (the caller keeps the cursor) and
  deletes one that has had no members for ``empty_expiry`` seconds or no member online for ``idle_expiry``.
  General is never deleted.

Domain failures are raised as :mod:`p2pd.errors` exceptions: :class:`NameTaken` when a name is owned by
another key, :class:`TooManyNames` / :class:`TooManyRooms` past a quota, :class:`NotFound`, :class:`Conflict`
(room exists / already a member / not a member / mailbox full), :class:`Forbidden` (deleting another's room),
and :class:`StoreUnavailable` when the backing store does not answer.
"""

import bisect
from dataclasses import dataclass, field

from twisted.internet.defer import fail, succeed

from p2pd.errors import (AlreadyMember, Forbidden, MailboxFull, NameTaken, NoSuchPeer, NoSuchRoom, NotMember,
                         P2PDError, RoomExists, StoreUnavailable, TooManyNames, TooManyRooms)

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
    members: list = field(default_factory=list)  # sorted; only the online ones when asked for those
    owner: str = None  # the creator while it keeps its name, else None
    count: int = None  # all its members (None: len(members))

    @property
    def member_count(self) -> int:
        return len(self.members) if self.count is None else self.count


# the domain errors both stores raise, worded once

def room_not_found(room):
    return NoSuchRoom("room %s does not exist" % room)


def too_many_names(max_names):
    return TooManyNames("this key owns %d names already, as many as one key may; release one first" % max_names)


def too_many_rooms(owner, max_rooms):
    return TooManyRooms("%s owns %d rooms already, as many as one name may; delete one first" % (owner, max_rooms))


def not_room_owner(display):
    return Forbidden("only the owner of room %s may delete it" % display)


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


@dataclass
class _Room:
    record: dict
    owner: str = None
    empty_since: int = None  # ms, while it has no members
    active_at: int = 0  # ms, when prune_rooms last saw a member online (creation at first)


class MemoryRooms:
    """The rooms of :class:`MemoryStore` (its ``rooms``, ``members`` and ``peers``)."""

    @_deferred
    def create_room(self, room, record, max_rooms=None):
        """Create *room*, owned by ``record["creator"]`` (if any); RoomExists, or TooManyRooms when the creator
        owns *max_rooms* rooms already. It is empty from ``record["created_at"]`` until someone joins."""
        self._check()
        if room in self.rooms:
            raise RoomExists("room %s already exists" % self.rooms[room].record["name"])
        owner = record.get("creator")
        if owner and max_rooms is not None and \
                sum(1 for r in self.rooms.values() if r.owner == owner) >= max_rooms:
            raise too_many_rooms(owner, max_rooms)
        self.rooms[room] = _Room(record, owner, record["created_at"], record["created_at"])
        self.members[room] = set()

    def _entry(self, room, online_at=None):
        members = self.members[room]
        shown = members if online_at is None else \
            {n for n in members if n in self.peers and self.peers[n].online(online_at)}
        return RoomEntry(room, self.rooms[room].record, sorted(shown), self.rooms[room].owner, len(members))

    @_deferred
    def get_room(self, room, online_at=None):
        """The room with its members (only those online at *online_at*, if given), or None."""
        self._check()
        if room not in self.rooms:
            return None
        return self._entry(room, online_at)

    @_deferred
    def list_rooms(self, after, limit):
        self._check()
        names = sorted(self.rooms)
        names = names[bisect.bisect_right(names, after or ""):]
        page = [self._entry(n) for n in names[:limit]]
        return page, (page[-1].name if len(names) > limit else None)

    @_deferred
    def join_room(self, room, name):
        self._check()
        if room not in self.rooms:
            raise room_not_found(room)
        if name in self.members[room]:
            raise AlreadyMember("%s is already a member of %s" % (name, self.rooms[room].record["name"]))
        self.members[room].add(name)
        self.rooms[room].empty_since = None

    @_deferred
    def leave_room(self, room, name, now_ms):
        """Leave *room*; if that leaves it empty, it is empty from *now_ms*."""
        self._check()
        if room not in self.rooms:
            raise room_not_found(room)
        if name not in self.members[room]:
            raise NotMember("%s is not a member of %s" % (name, self.rooms[room].record["name"]))
        self.members[room].discard(name)
        if not self.members[room]:
            self.rooms[room].empty_since = now_ms

    @_deferred
    def delete_room(self, room, owner=None):
        """Delete *room* and its memberships; with *owner*, only if that name owns it (else Forbidden)."""
        self._check()
        if room not in self.rooms:
            raise room_not_found(room)
        if owner is not None and self.rooms[room].owner != owner:
            raise not_room_owner(self.rooms[room].record["name"])
        del self.rooms[room], self.members[room]

    @_deferred
    def prune_rooms(self, now_ms, after, limit, empty_expiry, idle_expiry):
        """Look at up to *limit* rooms after *after*: delete those empty for *empty_expiry* seconds or with no
        member online for *idle_expiry* seconds (never General). (deleted rooms, cursor of the next page or None)."""
        self._check()
        names = sorted(self.rooms)
        names = names[bisect.bisect_right(names, after or ""):]
        deleted = []
        for name in names[:limit]:
            room, members = self.rooms[name], self.members[name]
            if name == GENERAL:
                continue
            if not members:
                if room.empty_since is None:
                    room.empty_since = now_ms
                if now_ms - room.empty_since > empty_expiry * 1000:
                    deleted.append(name)
            elif any(n in self.peers and self.peers[n].online(now_ms) for n in members):
                room.active_at = now_ms
            elif now_ms - room.active_at > idle_expiry * 1000:
                deleted.append(name)
        for name in deleted:
            del self.rooms[name], self.members[name]
        return deleted, (names[limit - 1] if len(names) > limit else None)


class MemoryStore(MemoryRooms):
    """Dictionaries with the same semantics as the Redis store; for unit tests and model checking."""

    def __init__(self):
        self.peers = {}  # name -> PeerEntry
        self.keys = {}  # public key -> names it owns
        self.probation = {}  # name -> lease expiry (ms) of a new name not renewed yet
        self.nonces = {}  # (name, nonce) -> expiry ms
        self.rooms = {GENERAL: _Room(general_record(0))}
        self.members = {GENERAL: set()}
        self.mailboxes = {}  # name -> {id: (expiry, message)}
        self.available = True
        self.used_memory = self.max_memory = 0  # what memory() reports; tests set them

    def _check(self):
        if not self.available:
            raise StoreUnavailable("the registry's store is unavailable")

    @_deferred
    def ping(self):
        self._check()

    @_deferred
    def memory(self):
        """{"used": bytes in use, "max": the maximum (0: none), "policy": what happens at the maximum}."""
        self._check()
        return {"used": self.used_memory, "max": self.max_memory, "policy": "noeviction"}

    # peers

    @_deferred
    def register(self, name, key, record, now_ms, ttl, max_names=None):
        """Claim *name* for *key* if free (True) or update it (False); NameTaken for another key, TooManyNames
        when *key* owns *max_names* names already."""
        self._check()
        entry = self.peers.get(name)
        if entry is not None and entry.key != key:
            raise NameTaken("name %s is owned by another key" % name)
        lease = now_ms + ttl * 1000
        created = entry is None
        if created:
            owned = self.keys.setdefault(key, set())
            if max_names is not None and len(owned) >= max_names:
                raise too_many_names(max_names)
            owned.add(name)
            entry = self.peers[name] = PeerEntry(name, key, record)
            self.members[GENERAL].add(name)
            self.probation[name] = lease
        elif name in self.probation:
            if entry.lease <= now_ms:
                del self.probation[name]  # its owner came back after the lease: established
            else:
                self.probation[name] = lease
        entry.record = record
        entry.lease = lease
        return created

    @_deferred
    def get_peer(self, name):
        self._check()
        return self.peers.get(name)

    @_deferred
    def heartbeat(self, name, now_ms, ttl):
        """Renew the lease (and end probation: the owner came back)."""
        self._check()
        entry = self.peers.get(name)
        if entry is None:
            raise NoSuchPeer("unknown peer %s" % name)
        entry.lease = now_ms + ttl * 1000
        self.probation.pop(name, None)
        return entry.lease

    @_deferred
    def set_offline(self, name):
        self._check()
        entry = self.peers.get(name)
        if entry is not None:
            entry.lease = 0

    @_deferred
    def release(self, name, now_ms):
        """Forget *name* entirely: ownership, record, presence, probation, room memberships (a room it leaves
        empty is empty from *now_ms*), ownership of its rooms, mailbox."""
        self._check()
        self._release(name, now_ms)

    def _release(self, name, now_ms):
        entry = self.peers.pop(name, None)
        owned = self.keys.get(entry.key) if entry is not None else None
        if owned is not None:
            owned.discard(name)
            if not owned:
                del self.keys[entry.key]
        self.probation.pop(name, None)
        self.mailboxes.pop(name, None)
        for room, members in self.members.items():
            if name in members:
                members.discard(name)
                if not members:
                    self.rooms[room].empty_since = now_ms
        for room in self.rooms.values():
            if room.owner == name:
                room.owner = None

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

    # mailbox

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
    def prune(self, now_ms, probation=None):
        """Drop expired nonces and mailbox entries (online-ness is derived from the lease, never stored); with
        *probation* (seconds), release the names on probation whose lease has been over that long. The number
        of names released."""
        self._check()
        for key in [k for k, exp in self.nonces.items() if exp <= now_ms]:
            del self.nonces[key]
        for box in self.mailboxes.values():
            for msg_id in [i for i, (exp, _) in box.items() if exp <= now_ms]:
                del box[msg_id]
        if probation is None:
            return 0
        lapsed = [n for n, lease in self.probation.items() if now_ms - lease > probation * 1000]
        for name in lapsed:
            self._release(name, now_ms)
        return len(lapsed)
