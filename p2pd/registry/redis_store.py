"""The registry's store on Redis, through our own client (:mod:`p2pd.registry.redis_client`).

Each store call is one round trip, and each operation that reads and writes several keys is one Lua script
(:mod:`p2pd.registry.redis_scripts`, sent by EVALSHA), so it is atomic: 50 concurrent claims of one name leave exactly one owner. Every call is bounded by the
client's timeout: while Redis is away the registry answers 503 within it instead of hanging, and the client's
connections come back within a second or so of Redis. Key names come from :mod:`p2pd.registry.schema` only.
"""

import json

from twisted.internet import defer
from twisted.logger import Logger

from p2pd.core import jsonbody
from p2pd.errors import (AlreadyMember, MailboxFull, NameTaken, NoSuchPeer, NotMember, P2PDError, RegistryFull,
                         RoomExists, StoreUnavailable)
from p2pd.registry import schema
from p2pd.registry.redis_client import DEFAULT_POOLSIZE, DEFAULT_TIMEOUT, RedisPool, ResponseError
from p2pd.registry.redis_scripts import (
    ACK, CREATE_ROOM, DELETE_ROOM, DEPOSIT, FETCH, GET_ROOM, HEARTBEAT, JOIN, LEAVE, LIST_ONLINE, LIST_ROOMS, OFFLINE,
    PRUNE, PRUNE_ROOMS, REGISTER, RELEASE,
)
from p2pd.registry.store import (
    GENERAL, PeerEntry, RoomEntry, general_record, not_room_owner, room_not_found, too_many_names, too_many_rooms,
)

log = Logger()

FULL_RETRY_AFTER = 60  # seconds a client waits after a write Redis refused at its maxmemory
PROBATION_BATCH = 500  # names one prune call releases at most: one script must not hold Redis long


def _peer_entry(reply, name):
    key, record, lease = reply
    if key is None:
        return None
    return PeerEntry(name, key.decode(), json.loads(record), int(lease or 0))


def _room_entry(reply, room):
    if reply is None:
        return None
    record, members, owner, count = reply
    return RoomEntry(room, json.loads(record), sorted(m.decode() for m in members), owner and owner.decode(),
                     count)


def _memory_info(raw):
    fields = dict(line.split(":", 1) for line in raw.decode("utf-8", "replace").splitlines() if ":" in line)
    return {"used": int(fields.get("used_memory", 0)), "max": int(fields.get("maxmemory", 0)),
            "policy": fields.get("maxmemory_policy", "unknown").strip()}


def _unavailable(failure):
    """Every Redis problem becomes StoreUnavailable (the client's connection errors already are one), but a
    write refused at Redis' maxmemory, which is RegistryFull."""
    if failure.check(P2PDError):
        return failure
    if failure.check(ResponseError) and "OOM command not allowed" in str(failure.value):  # in a script, too
        log.warn("Redis is at its maxmemory and refused a write: {error}", error=failure.getErrorMessage())
        raise RegistryFull("the registry is full; retry later", retry_after=FULL_RETRY_AFTER)
    if failure.check(ResponseError):
        log.error("Redis error: {error}", error=failure.getErrorMessage())
    else:
        log.failure("unexpected error talking to Redis", failure)
    raise StoreUnavailable("Redis error: %s" % (failure.getErrorMessage(),))


class RedisStore:
    """The store contract of :mod:`p2pd.registry.store` on a Redis server."""

    def __init__(self, clock, timeout=DEFAULT_TIMEOUT, poolsize=DEFAULT_POOLSIZE):
        self.redis = None
        self.url = None
        self.clock = clock
        self.timeout = timeout
        self.poolsize = poolsize

    @classmethod
    def from_url(cls, url, reactor, poolsize=DEFAULT_POOLSIZE, timeout=DEFAULT_TIMEOUT):
        store = cls(reactor, timeout, poolsize)
        store.connect(url)
        return store

    def connect(self, url):
        """Open the connection pool to *url* (the clock given at construction must be the reactor). Until
        then every call is StoreUnavailable."""
        pool = RedisPool.from_url(url, self.clock, size=self.poolsize, timeout=self.timeout)
        if self.redis is not None:
            self.redis.close()
        self.url, self.redis = url, pool
        pool.start()

    def close(self):
        if self.redis is None:
            return defer.succeed(None)
        redis, self.redis = self.redis, None
        return redis.close()

    def _call(self, *args):
        """One Redis command; any trouble becomes StoreUnavailable."""
        if self.redis is None:
            return defer.fail(StoreUnavailable("Redis is not connected yet"))
        return self.redis.execute(*args).addErrback(_unavailable)

    def _eval(self, script, keys, args):
        if self.redis is None:
            return defer.fail(StoreUnavailable("Redis is not connected yet"))
        return self.redis.evalsha(script, keys, args).addErrback(_unavailable)

    # health and setup

    def ping(self):
        return self._call("PING")

    def ensure_general(self, now_ms):
        return self._eval(CREATE_ROOM, [schema.room(GENERAL), schema.ROOMS, schema.owned("")],
                          [GENERAL, jsonbody.dumps(general_record(now_ms)), "", "", now_ms])

    def memory(self):
        """{"used": used_memory, "max": maxmemory (0: none), "policy": maxmemory_policy} from INFO memory, which
        also answers where CONFIG is disabled (as on many hosted Redis)."""
        return self._call("INFO", "memory").addCallback(_memory_info)

    def flush_all_for_tests(self):
        return self._call("FLUSHDB")

    # peers

    def register(self, name, key, record, now_ms, ttl, max_names=None):
        d = self._eval(
            REGISTER,
            [schema.peer(name), schema.NAMES, schema.ONLINE, schema.ONLINE_NAMES, schema.members(GENERAL),
             schema.memberof(name), schema.owner_key(key), schema.PROBATION],
            [name, key, jsonbody.dumps(record), now_ms + ttl * 1000, GENERAL, now_ms,
             "" if max_names is None else max_names],
        )
        return d.addCallback(_registered, name, max_names)

    def get_peer(self, name):  # the hot path: one command, one callback pair
        if self.redis is None:
            return defer.fail(StoreUnavailable("Redis is not connected yet"))
        d = self.redis.execute("HMGET", schema.peer(name), "key", "record", "lease")
        return d.addCallbacks(_peer_entry, _unavailable, callbackArgs=(name,))

    def heartbeat(self, name, now_ms, ttl):
        lease = now_ms + ttl * 1000
        d = self._eval(HEARTBEAT, [schema.peer(name), schema.ONLINE, schema.ONLINE_NAMES, schema.PROBATION],
                       [name, lease])
        return d.addCallback(_refreshed, name, lease)

    def set_offline(self, name):
        return self._eval(OFFLINE, [schema.peer(name), schema.ONLINE, schema.ONLINE_NAMES], [name])

    def release(self, name, now_ms):
        return self._eval(RELEASE, [schema.peer(name)], [name, schema.PREFIX, now_ms])

    def list_online(self, now_ms, after, limit):
        d = self._eval(LIST_ONLINE, [schema.ONLINE_NAMES], [after or "", now_ms, limit, schema.PREFIX])
        return d.addCallback(_online_page, limit)

    def use_nonce(self, name, nonce, now_ms, ttl):
        d = self._call("SET", schema.nonce(name, nonce), "1", "PX", ttl * 1000, "NX")
        return d.addCallback(lambda reply: reply is not None)

    # rooms

    def create_room(self, room, record, max_rooms=None):
        owner = record.get("creator") or ""
        d = self._eval(CREATE_ROOM, [schema.room(room), schema.ROOMS, schema.owned(owner)],
                       [room, jsonbody.dumps(record), owner, "" if max_rooms is None else max_rooms,
                        record["created_at"]])
        return d.addCallback(_created, room, owner, max_rooms)

    def get_room(self, room, online_at=None):
        d = self._eval(GET_ROOM, [schema.room(room), schema.members(room), schema.ONLINE],
                       ["" if online_at is None else online_at, "1" if room == GENERAL else ""])
        return d.addCallback(_room_entry, room)

    def delete_room(self, room, owner=None):
        d = self._eval(DELETE_ROOM, [schema.room(room)], [room, owner or "", schema.PREFIX])
        return d.addCallback(_room_deleted, room)

    def prune_rooms(self, now_ms, after, limit, empty_expiry, idle_expiry):
        d = self._eval(PRUNE_ROOMS, [schema.ROOMS], [after or "", limit, now_ms, int(empty_expiry * 1000),
                                                     int(idle_expiry * 1000), schema.PREFIX, GENERAL])
        return d.addCallback(lambda reply: ([r.decode() for r in reply[1]], reply[0] and reply[0].decode()))

    def list_rooms(self, after, limit):
        d = self._eval(LIST_ROOMS, [schema.ROOMS], [after or "", limit, schema.PREFIX])
        return d.addCallback(_rooms_page, limit)

    def join_room(self, room, name):
        d = self._eval(JOIN, [schema.room(room), schema.members(room), schema.memberof(name)], [name, room])
        return d.addCallback(_membership_changed, room, AlreadyMember, "%s is already a member of %s", name)

    def leave_room(self, room, name, now_ms):
        d = self._eval(LEAVE, [schema.room(room), schema.members(room), schema.memberof(name)], [name, room, now_ms])
        return d.addCallback(_membership_changed, room, NotMember, "%s is not a member of %s", name)

    # mailbox

    def deposit(self, recipient, message, now_ms, ttl, max_count, max_per_sender=None):
        per_sender = max_count if max_per_sender is None else max_per_sender
        d = self._eval(
            DEPOSIT,
            [schema.mailbox(recipient), schema.message(recipient, message["id"]),
             schema.mailbox_from(recipient, message["from"])],
            [message["id"], jsonbody.dumps(message), now_ms + ttl * 1000, now_ms, max_count, ttl * 1000, per_sender],
        )
        return d.addCallback(_deposited, recipient, max_count, per_sender)

    def fetch(self, recipient, now_ms, limit):
        d = self._eval(FETCH, [schema.mailbox(recipient)], [now_ms, limit])
        return d.addCallback(lambda raw: [json.loads(m) for m in raw])

    def ack(self, recipient, ids):
        if not ids:
            return defer.succeed(0)
        return self._eval(ACK, [schema.mailbox(recipient)], list(ids))

    def prune(self, now_ms, probation=None):
        deadline = "" if probation is None else now_ms - int(probation * 1000)
        return self._eval(PRUNE, [schema.ONLINE, schema.ONLINE_NAMES, schema.PROBATION],
                          [now_ms, deadline, schema.PREFIX, PROBATION_BATCH])


# reply -> result (or domain error) of each call


def _registered(result, name, max_names):
    if result == -2:
        raise too_many_names(max_names)
    if result < 0:
        raise NameTaken("name %s is owned by another key" % name)
    return result == 1


def _refreshed(result, name, lease):
    if result < 0:
        raise NoSuchPeer("unknown peer %s" % name)
    return lease


def _online_page(flat, limit):
    entries = [
        PeerEntry(flat[i].decode(), flat[i + 1].decode(), json.loads(flat[i + 2]), int(flat[i + 3]))
        for i in range(0, len(flat), 4)
    ]
    page = entries[:limit]
    return page, (page[-1].name if len(entries) > limit else None)


def _created(result, room, owner, max_rooms):
    if result == -2:
        raise too_many_rooms(owner, max_rooms)
    if result != 1:
        raise RoomExists("room %s already exists" % json.loads(result)["name"])


def _room_deleted(result, room):
    if result == -1:
        raise room_not_found(room)
    if result != 1:
        raise not_room_owner(json.loads(result)["name"])


def _rooms_page(flat, limit):
    rooms = [
        RoomEntry(flat[i].decode(), json.loads(flat[i + 1]), sorted(m.decode() for m in flat[i + 2]),
                  flat[i + 3] and flat[i + 3].decode())
        for i in range(0, len(flat), 4)
        if flat[i + 1] is not None
    ]
    page = rooms[:limit]
    return page, (page[-1].name if len(flat) // 4 > limit else None)


def _membership_changed(result, room, error, message, name):
    if result == -1:
        raise room_not_found(room)
    if result != 1:
        raise error(message % (name, json.loads(result)["name"]))


def _deposited(stored, recipient, max_count, per_sender):
    if stored == -1:
        raise MailboxFull("the mailbox of %s holds %d messages from you already" % (recipient, per_sender))
    if not stored:
        raise MailboxFull("the mailbox of %s is full (%d messages)" % (recipient, max_count))
