"""The registry's store on Redis, through our own client (:mod:`p2pd.registry.redis_client`).

Each store call is one round trip, and each operation that reads and writes several keys is one Lua script (sent
by EVALSHA), so it is atomic: 50 concurrent claims of one name leave exactly one owner. Every call is bounded by the
client's timeout: while Redis is away the registry answers 503 within it instead of hanging, and the client's
connections come back within a second or so of Redis. Key names come from :mod:`p2pd.registry.schema` only.
"""

import json

from twisted.internet import defer
from twisted.logger import Logger

from p2pd.core import jsonbody
from p2pd.errors import (AlreadyMember, MailboxFull, NameTaken, NoSuchPeer, NotMember, P2PDError, RoomExists,
                         StoreUnavailable)
from p2pd.registry import schema
from p2pd.registry.redis_client import DEFAULT_POOLSIZE, DEFAULT_TIMEOUT, RedisPool, ResponseError
from p2pd.registry.store import (
    GENERAL, PeerEntry, RoomEntry, general_record, room_not_found,
)

log = Logger()

REGISTER = """
local owner = redis.call('HGET', KEYS[1], 'key')
if owner and owner ~= ARGV[2] then return -1 end
redis.call('HSET', KEYS[1], 'key', ARGV[2], 'record', ARGV[3], 'lease', ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
redis.call('ZADD', KEYS[4], 0, ARGV[1])
if owner then return 0 end
redis.call('ZADD', KEYS[2], 0, ARGV[1])
redis.call('SADD', KEYS[5], ARGV[1])
redis.call('SADD', KEYS[6], ARGV[5])
return 1
"""

HEARTBEAT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
redis.call('HSET', KEYS[1], 'lease', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[3], 0, ARGV[1])
return 1
"""

OFFLINE = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'lease', 0) end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
"""

RELEASE = """
for _, room in ipairs(redis.call('SMEMBERS', KEYS[4])) do
  redis.call('SREM', ARGV[2] .. 'members:' .. room, ARGV[1])
end
for _, id in ipairs(redis.call('ZRANGE', KEYS[5], 0, -1)) do
  redis.call('DEL', KEYS[5] .. ':' .. id)
end
redis.call('DEL', KEYS[1], KEYS[4], KEYS[5])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[6], ARGV[1])
return 1
"""

# Online peers after a name, in name order: walk the lexicographic online index, skip leases that ran out
# (the pruner removes them from the index), return name, key, record, lease for up to limit+1 peers.
LIST_ONLINE = """
local out, start, found = {}, '-', 0
if ARGV[1] ~= '' then start = '(' .. ARGV[1] end
local want = tonumber(ARGV[3]) + 1
while found < want do
  local batch = redis.call('ZRANGEBYLEX', KEYS[1], start, '+', 'LIMIT', 0, 100)
  if #batch == 0 then break end
  for _, name in ipairs(batch) do
    local v = redis.call('HMGET', ARGV[4] .. 'peer:' .. name, 'key', 'record', 'lease')
    if v[1] and tonumber(v[3]) > tonumber(ARGV[2]) then
      table.insert(out, name); table.insert(out, v[1]); table.insert(out, v[2]); table.insert(out, v[3])
      found = found + 1
      if found >= want then break end
    end
    start = '(' .. name
  end
end
return out
"""

# JOIN, LEAVE: -1 no such room, 1 done, or the room's record (JSON) when the name already was (was not) a member.
JOIN = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return redis.call('HGET', KEYS[1], 'record') end
redis.call('SADD', KEYS[3], ARGV[2])
return 1
"""

LEAVE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('SREM', KEYS[2], ARGV[1]) == 0 then return redis.call('HGET', KEYS[1], 'record') end
redis.call('SREM', KEYS[3], ARGV[2])
return 1
"""

# 1 when created, else the existing room's record (JSON).
CREATE_ROOM = """
local existing = redis.call('HGET', KEYS[1], 'record')
if existing then return existing end
redis.call('HSET', KEYS[1], 'record', ARGV[2])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
return 1
"""

# The room's record and members, or nil.
GET_ROOM = """
local record = redis.call('HGET', KEYS[1], 'record')
if not record then return false end
return {record, redis.call('SMEMBERS', KEYS[2])}
"""

LIST_ROOMS = """
local start = '-'
if ARGV[1] ~= '' then start = '(' .. ARGV[1] end
local names = redis.call('ZRANGEBYLEX', KEYS[1], start, '+', 'LIMIT', 0, tonumber(ARGV[2]) + 1)
local out = {}
for _, name in ipairs(names) do
  table.insert(out, name)
  table.insert(out, redis.call('HGET', ARGV[3] .. 'room:' .. name, 'record'))
  table.insert(out, redis.call('SMEMBERS', ARGV[3] .. 'members:' .. name))
end
return out
"""

DEPOSIT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[4])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[5]) then return 0 end
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[7]) then return -1 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('PEXPIRE', KEYS[3], ARGV[6])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[6])
return 1
"""

FETCH = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf', 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ids) do
  local m = redis.call('GET', KEYS[1] .. ':' .. id)
  if m then table.insert(out, m) end
end
return out
"""

ACK = """
local n = 0
for _, id in ipairs(ARGV) do
  local m = redis.call('GET', KEYS[1] .. ':' .. id)
  if m then
    local ok, message = pcall(cjson.decode, m)
    if ok and type(message['from']) == 'string' then
      redis.call('ZREM', KEYS[1] .. ':from:' .. message['from'], id)
    end
  end
  if redis.call('ZREM', KEYS[1], id) == 1 then n = n + 1 end
  redis.call('DEL', KEYS[1] .. ':' .. id)
end
return n
"""

PRUNE = """
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1000)
for _, name in ipairs(gone) do
  redis.call('ZREM', KEYS[1], name)
  redis.call('ZREM', KEYS[2], name)
end
return #gone
"""


def _peer_entry(reply, name):
    key, record, lease = reply
    if key is None:
        return None
    return PeerEntry(name, key.decode(), json.loads(record), int(lease or 0))


def _room_entry(reply, room):
    if reply is None:
        return None
    record, members = reply
    return RoomEntry(room, json.loads(record), sorted(m.decode() for m in members))


def _unavailable(failure):
    """Every Redis problem becomes StoreUnavailable (the client's connection errors already are one)."""
    if failure.check(P2PDError):
        return failure
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
        return self._eval(CREATE_ROOM, [schema.room(GENERAL), schema.ROOMS],
                          [GENERAL, jsonbody.dumps(general_record(now_ms))])

    def flush_all_for_tests(self):
        return self._call("FLUSHDB")

    # peers

    def register(self, name, key, record, now_ms, ttl):
        d = self._eval(
            REGISTER,
            [schema.peer(name), schema.NAMES, schema.ONLINE, schema.ONLINE_NAMES, schema.members(GENERAL),
             schema.memberof(name)],
            [name, key, jsonbody.dumps(record), now_ms + ttl * 1000, GENERAL],
        )
        return d.addCallback(_registered, name)

    def get_peer(self, name):  # the hot path: one command, one callback pair
        if self.redis is None:
            return defer.fail(StoreUnavailable("Redis is not connected yet"))
        d = self.redis.execute("HMGET", schema.peer(name), "key", "record", "lease")
        return d.addCallbacks(_peer_entry, _unavailable, callbackArgs=(name,))

    def heartbeat(self, name, now_ms, ttl):
        lease = now_ms + ttl * 1000
        d = self._eval(HEARTBEAT, [schema.peer(name), schema.ONLINE, schema.ONLINE_NAMES], [name, lease])
        return d.addCallback(_refreshed, name, lease)

    def set_offline(self, name):
        return self._eval(OFFLINE, [schema.peer(name), schema.ONLINE, schema.ONLINE_NAMES], [name])

    def release(self, name):
        return self._eval(
            RELEASE,
            [schema.peer(name), schema.NAMES, schema.ONLINE, schema.memberof(name), schema.mailbox(name),
             schema.ONLINE_NAMES],
            [name, schema.PREFIX],
        )

    def list_online(self, now_ms, after, limit):
        d = self._eval(LIST_ONLINE, [schema.ONLINE_NAMES], [after or "", now_ms, limit, schema.PREFIX])
        return d.addCallback(_online_page, limit)

    def use_nonce(self, name, nonce, now_ms, ttl):
        d = self._call("SET", schema.nonce(name, nonce), "1", "PX", ttl * 1000, "NX")
        return d.addCallback(lambda reply: reply is not None)

    # rooms

    def create_room(self, room, record):
        d = self._eval(CREATE_ROOM, [schema.room(room), schema.ROOMS], [room, jsonbody.dumps(record)])
        return d.addCallback(_created, room)

    def get_room(self, room):
        return self._eval(GET_ROOM, [schema.room(room), schema.members(room)], []).addCallback(_room_entry, room)

    def list_rooms(self, after, limit):
        d = self._eval(LIST_ROOMS, [schema.ROOMS], [after or "", limit, schema.PREFIX])
        return d.addCallback(_rooms_page, limit)

    def join_room(self, room, name):
        d = self._eval(JOIN, [schema.room(room), schema.members(room), schema.memberof(name)], [name, room])
        return d.addCallback(_membership_changed, room, AlreadyMember, "%s is already a member of %s", name)

    def leave_room(self, room, name):
        d = self._eval(LEAVE, [schema.room(room), schema.members(room), schema.memberof(name)], [name, room])
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

    def prune(self, now_ms):
        return self._eval(PRUNE, [schema.ONLINE, schema.ONLINE_NAMES], [now_ms])


# reply -> result (or domain error) of each call


def _registered(result, name):
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


def _created(result, room):
    if result != 1:
        raise RoomExists("room %s already exists" % json.loads(result)["name"])


def _rooms_page(flat, limit):
    rooms = [
        RoomEntry(flat[i].decode(), json.loads(flat[i + 1]), sorted(m.decode() for m in flat[i + 2]))
        for i in range(0, len(flat), 3)
        if flat[i + 1] is not None
    ]
    page = rooms[:limit]
    return page, (page[-1].name if len(flat) // 3 > limit else None)


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
