"""The registry's store on Redis, through txredisapi.

Each operation that reads and writes several keys is one Lua script, so it is atomic (50 concurrent claims of one
name leave exactly one owner) and costs one round trip. Every call is bounded by a timeout: while Redis is away
the registry answers 503 within it instead of hanging, and the connection pool reconnects within a second of
Redis coming back. Key names come from :mod:`p2pd.registry.schema` only.
"""

from urllib.parse import parse_qs, urlsplit

import txredisapi
from twisted.internet import defer, error
from twisted.logger import Logger

from p2pd.core import jsonbody
from p2pd.errors import BadRequest, NameTaken, P2PDError, StoreUnavailable
from p2pd.registry import schema
from p2pd.registry.store import (
    GENERAL, AlreadyMember, MailboxFull, NoSuchPeer, NotMember, PeerEntry, RoomEntry, RoomExists,
    general_record, room_not_found,
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

JOIN = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('SADD', KEYS[3], ARGV[2])
return 1
"""

LEAVE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('SREM', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('SREM', KEYS[3], ARGV[2])
return 1
"""

CREATE_ROOM = """
if redis.call('HSETNX', KEYS[1], 'record', ARGV[2]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], 0, ARGV[1])
return 1
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
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[5]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
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


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else value


def parse_redis_url(url: str) -> dict:
    """``redis://host:port/db`` or ``unix:///path/to/redis.sock?db=0`` -> connection arguments."""
    parts = urlsplit(url)
    try:
        if parts.scheme == "redis":
            db = int(parts.path.strip("/") or 0)
            return {"host": parts.hostname or "127.0.0.1", "port": parts.port or 6379, "dbid": db,
                    "password": parts.password}
        if parts.scheme == "unix" and parts.path:
            db = int(parse_qs(parts.query).get("db", ["0"])[0])
            return {"path": parts.path, "dbid": db, "password": parts.password}
    except ValueError:
        pass
    raise BadRequest("invalid Redis URL %r: use redis://host:port/db or unix:///path/redis.sock" % (url,))


class RedisStore:
    """The store contract of :mod:`p2pd.registry.store` on a Redis server."""

    def __init__(self, clock, timeout=1.5, poolsize=8):
        self.redis = None
        self.url = None
        self.clock = clock
        self.timeout = timeout
        self.poolsize = poolsize
        self.closed = False

    @classmethod
    def from_url(cls, url, reactor, poolsize=8, timeout=1.5):
        store = cls(reactor, timeout, poolsize)
        store.connect(url)
        return store

    def connect(self, url):
        """Open the connection pool to *url*. Until then every call is StoreUnavailable."""
        args = parse_redis_url(url)
        self.url = url
        # dbid=None for db 0: txredisapi stops reconnecting for good when the SELECT it sends on connect fails.
        common = dict(dbid=args["dbid"] or None, poolsize=self.poolsize, reconnect=True,
                      password=args["password"], convertNumbers=False, replyTimeout=self.timeout,
                      connectTimeout=self.timeout)
        if "path" in args:
            self.redis = txredisapi.lazyUnixConnectionPool(args["path"], **common)
        else:
            self.redis = txredisapi.lazyConnectionPool(args["host"], args["port"], **common)
        factory = self.redis._factory
        factory.initialDelay, factory.factor, factory.maxDelay, factory.jitter = 0.1, 2.0, 1.0, 0.1

    def close(self):
        self.closed = True
        if self.redis is None:
            return defer.succeed(None)
        return self.redis.disconnect()

    def _heal(self):
        """txredisapi gives up reconnecting if the AUTH/SELECT it sends on connect fails; start a new pool."""
        if self.redis is not None and self.redis._factory.stopped and not self.closed:
            log.warn("Redis connection pool gave up reconnecting; opening a new one")
            old, self.redis = self.redis, None
            old.disconnect().addErrback(lambda f: None)
            self.connect(self.url)

    def _call(self, method, *args):
        """Run one Redis command under the timeout; any connection trouble becomes StoreUnavailable."""
        if self.redis is None:
            return defer.fail(StoreUnavailable("Redis is not connected yet"))
        self._heal()
        try:
            d = getattr(self.redis, method)(*args)
        except Exception as e:  # txredisapi raises synchronously when it has given up connecting
            return defer.fail(StoreUnavailable("Redis is unavailable: %s" % (e,)))
        d.addTimeout(self.timeout, self.clock)
        d.addErrback(self._unavailable)
        return d

    def _unavailable(self, failure):
        if failure.check(P2PDError):
            return failure
        if failure.check(defer.TimeoutError, defer.CancelledError, error.ConnectError, error.ConnectionLost,
                         error.ConnectionDone, txredisapi.ConnectionError, txredisapi.TimeoutError):
            raise StoreUnavailable("Redis is unavailable (%s)" % (failure.getErrorMessage() or "timeout",))
        log.failure("unexpected Redis error", failure)
        raise StoreUnavailable("Redis error: %s" % (failure.getErrorMessage(),))

    def _eval(self, script, keys, args):
        return self._call("eval", script, list(keys), [str(a) for a in args])

    # health and setup

    def ping(self):
        return self._call("ping")

    def ensure_general(self, now_ms):
        return self._eval(CREATE_ROOM, [schema.room(GENERAL), schema.ROOMS],
                          [GENERAL, jsonbody.dumps(general_record(now_ms)).decode()])

    @defer.inlineCallbacks
    def flush_all_for_tests(self):
        yield self._call("flushdb")

    # peers

    @defer.inlineCallbacks
    def register(self, name, key, record, now_ms, ttl):
        lease = now_ms + ttl * 1000
        result = yield self._eval(
            REGISTER,
            [schema.peer(name), schema.NAMES, schema.ONLINE, schema.ONLINE_NAMES, schema.members(GENERAL),
             schema.memberof(name)],
            [name, key, jsonbody.dumps(record).decode(), lease, GENERAL],
        )
        if int(result) < 0:
            raise NameTaken("name %s is owned by another key" % name)
        return int(result) == 1

    @defer.inlineCallbacks
    def get_peer(self, name):
        key, record, lease = yield self._call("hmget", schema.peer(name), ["key", "record", "lease"])
        if key is None:
            return None
        return PeerEntry(name, _text(key), jsonbody.loads(record), int(lease or 0))

    @defer.inlineCallbacks
    def heartbeat(self, name, now_ms, ttl):
        lease = now_ms + ttl * 1000
        result = yield self._eval(HEARTBEAT, [schema.peer(name), schema.ONLINE, schema.ONLINE_NAMES], [name, lease])
        if int(result) < 0:
            raise NoSuchPeer("unknown peer %s" % name)
        return lease

    def set_offline(self, name):
        return self._eval(OFFLINE, [schema.peer(name), schema.ONLINE, schema.ONLINE_NAMES], [name])

    def release(self, name):
        return self._eval(
            RELEASE,
            [schema.peer(name), schema.NAMES, schema.ONLINE, schema.memberof(name), schema.mailbox(name),
             schema.ONLINE_NAMES],
            [name, schema.PREFIX],
        )

    @defer.inlineCallbacks
    def list_online(self, now_ms, after, limit):
        flat = yield self._eval(LIST_ONLINE, [schema.ONLINE_NAMES], [after or "", now_ms, limit, schema.PREFIX])
        entries = [
            PeerEntry(_text(flat[i]), _text(flat[i + 1]), jsonbody.loads(flat[i + 2]), int(flat[i + 3]))
            for i in range(0, len(flat), 4)
        ]
        page = entries[:limit]
        return page, (page[-1].name if len(entries) > limit else None)

    @defer.inlineCallbacks
    def use_nonce(self, name, nonce, now_ms, ttl):
        result = yield self._call("set", schema.nonce(name, nonce), "1", None, ttl * 1000, True)
        return result is not None

    # rooms

    @defer.inlineCallbacks
    def create_room(self, room, record):
        created = yield self._eval(CREATE_ROOM, [schema.room(room), schema.ROOMS],
                                   [room, jsonbody.dumps(record).decode()])
        if not int(created):
            existing = yield self.get_room(room)
            raise RoomExists("room %s already exists" % (existing.record["name"] if existing else room))

    @defer.inlineCallbacks
    def get_room(self, room):
        record = yield self._call("hget", schema.room(room), "record")
        if record is None:
            return None
        members = yield self._call("smembers", schema.members(room))
        return RoomEntry(room, jsonbody.loads(record), sorted(_text(m) for m in members))

    @defer.inlineCallbacks
    def list_rooms(self, after, limit):
        flat = yield self._eval(LIST_ROOMS, [schema.ROOMS], [after or "", limit, schema.PREFIX])
        rooms = [
            RoomEntry(_text(flat[i]), jsonbody.loads(flat[i + 1]), sorted(_text(m) for m in flat[i + 2]))
            for i in range(0, len(flat), 3)
            if flat[i + 1] is not None
        ]
        page = rooms[:limit]
        return page, (page[-1].name if len(flat) // 3 > limit else None)

    @defer.inlineCallbacks
    def _membership(self, script, room, name):
        result = int((yield self._eval(script, [schema.room(room), schema.members(room), schema.memberof(name)],
                                       [name, room])))
        if result < 0:
            raise room_not_found(room)
        if result == 0:
            existing = yield self.get_room(room)
            return existing.record["name"]
        return None

    @defer.inlineCallbacks
    def join_room(self, room, name):
        display = yield self._membership(JOIN, room, name)
        if display is not None:
            raise AlreadyMember("%s is already a member of %s" % (name, display))

    @defer.inlineCallbacks
    def leave_room(self, room, name):
        display = yield self._membership(LEAVE, room, name)
        if display is not None:
            raise NotMember("%s is not a member of %s" % (name, display))

    # mailbox

    @defer.inlineCallbacks
    def deposit(self, recipient, message, now_ms, ttl, max_count):
        stored = yield self._eval(
            DEPOSIT,
            [schema.mailbox(recipient), schema.message(recipient, message["id"])],
            [message["id"], jsonbody.dumps(message).decode(), now_ms + ttl * 1000, now_ms, max_count, ttl * 1000],
        )
        if not int(stored):
            raise MailboxFull("the mailbox of %s is full (%d messages)" % (recipient, max_count))

    @defer.inlineCallbacks
    def fetch(self, recipient, now_ms, limit):
        raw = yield self._eval(FETCH, [schema.mailbox(recipient)], [now_ms, limit])
        return [jsonbody.loads(m) for m in raw]

    @defer.inlineCallbacks
    def ack(self, recipient, ids):
        if not ids:
            return 0
        return int((yield self._eval(ACK, [schema.mailbox(recipient)], list(ids))))

    def prune(self, now_ms):
        return self._eval(PRUNE, [schema.ONLINE, schema.ONLINE_NAMES], [now_ms])
