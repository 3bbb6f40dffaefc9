"""The Lua scripts of the Redis store (:mod:`p2pd.registry.redis_store`), one per operation that reads and
writes several keys, so that each is atomic. KEYS and ARGV are documented beside each script where they are not
obvious; keys a script reaches from a name or a room it reads are built from the schema's prefix (ARGV), as
:mod:`p2pd.registry.schema` spells them.
"""

# -1 owned by another key, -2 the key owns ARGV[7] names already, 1 claimed (on probation), 0 updated. An update
# of a name on probation ends it if the lease had run out (its owner came back), else moves its deadline.
REGISTER = """
local owner = redis.call('HGET', KEYS[1], 'key')
if owner and owner ~= ARGV[2] then return -1 end
if not owner and ARGV[7] ~= '' and redis.call('SCARD', KEYS[7]) >= tonumber(ARGV[7]) then return -2 end
if owner and redis.call('ZSCORE', KEYS[8], ARGV[1]) then
  if tonumber(redis.call('HGET', KEYS[1], 'lease') or 0) <= tonumber(ARGV[6]) then
    redis.call('ZREM', KEYS[8], ARGV[1])
  else
    redis.call('ZADD', KEYS[8], ARGV[4], ARGV[1])
  end
end
redis.call('HSET', KEYS[1], 'key', ARGV[2], 'record', ARGV[3], 'lease', ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
redis.call('ZADD', KEYS[4], 0, ARGV[1])
if owner then return 0 end
redis.call('ZADD', KEYS[2], 0, ARGV[1])
redis.call('SADD', KEYS[5], ARGV[1])
redis.call('SADD', KEYS[6], ARGV[5])
redis.call('SADD', KEYS[7], ARGV[1])
redis.call('ZADD', KEYS[8], ARGV[4], ARGV[1])
return 1
"""

HEARTBEAT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
redis.call('HSET', KEYS[1], 'lease', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[3], 0, ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
return 1
"""

OFFLINE = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'lease', 0) end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
"""

# release(prefix, name, now): forget a name as DELETE /v1/peers/{name} does (RELEASE and the pruner's probation
# sweep share it). Rooms it leaves empty are empty from now; rooms it owns are owned by nobody from now on; the
# per-sender quota sets of its mailbox go with the mailbox.
RELEASE_FUNCTION = """
local function release(prefix, name, now)
  local peer = prefix .. 'peer:' .. name
  local key = redis.call('HGET', peer, 'key')
  if key then redis.call('SREM', prefix .. 'key:' .. key, name) end
  local memberof = prefix .. 'memberof:' .. name
  for _, room in ipairs(redis.call('SMEMBERS', memberof)) do
    local members = prefix .. 'members:' .. room
    if redis.call('SREM', members, name) == 1 and redis.call('SCARD', members) == 0
        and redis.call('EXISTS', prefix .. 'room:' .. room) == 1 then
      redis.call('HSET', prefix .. 'room:' .. room, 'empty_since', now)
    end
  end
  local owned = prefix .. 'owned:' .. name
  for _, room in ipairs(redis.call('SMEMBERS', owned)) do
    redis.call('HDEL', prefix .. 'room:' .. room, 'owner')
  end
  local box = prefix .. 'mbox:' .. name
  for _, id in ipairs(redis.call('ZRANGE', box, 0, -1)) do
    local m = redis.call('GET', box .. ':' .. id)
    if m then
      local ok, message = pcall(cjson.decode, m)
      if ok and type(message['from']) == 'string' then redis.call('DEL', box .. ':from:' .. message['from']) end
    end
    redis.call('DEL', box .. ':' .. id)
  end
  redis.call('DEL', peer, memberof, owned, box)
  for _, index in ipairs({'names', 'online', 'online-names', 'probation'}) do
    redis.call('ZREM', prefix .. index, name)
  end
end
"""

RELEASE = RELEASE_FUNCTION + """
release(ARGV[2], ARGV[1], ARGV[3])
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
redis.call('HDEL', KEYS[1], 'empty_since')
return 1
"""

LEAVE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('SREM', KEYS[2], ARGV[1]) == 0 then return redis.call('HGET', KEYS[1], 'record') end
redis.call('SREM', KEYS[3], ARGV[2])
if redis.call('SCARD', KEYS[2]) == 0 then redis.call('HSET', KEYS[1], 'empty_since', ARGV[3]) end
return 1
"""

# 1 when created, -2 when its owner (ARGV[3]) owns ARGV[4] rooms already, else the existing room's record (JSON).
CREATE_ROOM = """
local existing = redis.call('HGET', KEYS[1], 'record')
if existing then return existing end
if ARGV[3] ~= '' then
  if ARGV[4] ~= '' and redis.call('SCARD', KEYS[3]) >= tonumber(ARGV[4]) then return -2 end
  redis.call('SADD', KEYS[3], ARGV[1])
  redis.call('HSET', KEYS[1], 'owner', ARGV[3])
end
redis.call('HSET', KEYS[1], 'record', ARGV[2], 'empty_since', ARGV[5], 'active_at', ARGV[5])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
return 1
"""

# The room's record, members, owner and member count, or nil. With a time in ARGV[1], only the members whose lease
# runs past it; for General (ARGV[2] = '1') that is the online index itself, not a walk over every name.
GET_ROOM = """
local record = redis.call('HGET', KEYS[1], 'record')
if not record then return false end
local members
if ARGV[1] == '' then
  members = redis.call('SMEMBERS', KEYS[2])
elseif ARGV[2] == '1' then
  members = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. ARGV[1], '+inf')
else
  members = {}
  for _, name in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    local lease = redis.call('ZSCORE', KEYS[3], name)
    if lease and tonumber(lease) > tonumber(ARGV[1]) then table.insert(members, name) end
  end
end
return {record, members, redis.call('HGET', KEYS[1], 'owner'), redis.call('SCARD', KEYS[2])}
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
  table.insert(out, redis.call('HGET', ARGV[3] .. 'room:' .. name, 'owner'))
end
return out
"""

# delete_room(prefix, room): the room, its members set, their memberof entries and its owner's owned entry.
DELETE_ROOM_FUNCTION = """
local function delete_room(prefix, room)
  local members = prefix .. 'members:' .. room
  for _, name in ipairs(redis.call('SMEMBERS', members)) do
    redis.call('SREM', prefix .. 'memberof:' .. name, room)
  end
  local owner = redis.call('HGET', prefix .. 'room:' .. room, 'owner')
  if owner then redis.call('SREM', prefix .. 'owned:' .. owner, room) end
  redis.call('DEL', prefix .. 'room:' .. room, members)
  redis.call('ZREM', prefix .. 'rooms', room)
end
"""

# -1 no such room, 1 deleted, or the room's record (JSON) when ARGV[2] names someone who does not own it.
DELETE_ROOM = DELETE_ROOM_FUNCTION + """
local record = redis.call('HGET', KEYS[1], 'record')
if not record then return -1 end
if ARGV[2] ~= '' and redis.call('HGET', KEYS[1], 'owner') ~= ARGV[2] then return record end
delete_room(ARGV[3], ARGV[1])
return 1
"""

# Up to ARGV[2] rooms after ARGV[1]: delete those empty (since empty_since) for more than ARGV[4] ms, or with
# members none of whom has been online (since active_at) for more than ARGV[5] ms; General stays. A room that
# lacks a stamp (made by an older registry) is stamped now. {cursor of the next page or nil, deleted rooms}.
PRUNE_ROOMS = DELETE_ROOM_FUNCTION + """
local prefix, now = ARGV[6], tonumber(ARGV[3])
local start = '-'
if ARGV[1] ~= '' then start = '(' .. ARGV[1] end
local limit = tonumber(ARGV[2])
local names = redis.call('ZRANGEBYLEX', KEYS[1], start, '+', 'LIMIT', 0, limit + 1)
local deleted = {}
for i = 1, math.min(#names, limit) do
  local room = names[i]
  local hash = prefix .. 'room:' .. room
  if room ~= ARGV[7] then
    local members = redis.call('SMEMBERS', prefix .. 'members:' .. room)
    local gone = false
    if #members == 0 then
      local since = redis.call('HGET', hash, 'empty_since')
      if not since then redis.call('HSET', hash, 'empty_since', ARGV[3]); since = ARGV[3] end
      gone = now - tonumber(since) > tonumber(ARGV[4])
    else
      local online = false
      for _, name in ipairs(members) do
        local lease = redis.call('ZSCORE', prefix .. 'online', name)
        if lease and tonumber(lease) > now then online = true; break end
      end
      local active = redis.call('HGET', hash, 'active_at')
      if online or not active then
        redis.call('HSET', hash, 'active_at', ARGV[3])
      else
        gone = now - tonumber(active) > tonumber(ARGV[5])
      end
    end
    if gone then
      delete_room(prefix, room)
      table.insert(deleted, room)
    end
  end
end
local cursor = false
if #names > limit then cursor = names[limit] end
return {cursor, deleted}
"""

# 0 mailbox full, -1 the sender's share full, 1 stored. Reads first, and the first write is the SET of the message:
# Redis (before 7) refuses a script at its maxmemory only at its first write, and only if that write is one that
# grows memory; starting with the ZREMRANGEBYSCORE clean-up would let every deposit past maxmemory.
DEPOSIT = """
if redis.call('ZCOUNT', KEYS[1], '(' .. ARGV[4], '+inf') >= tonumber(ARGV[5]) then return 0 end
if redis.call('ZCOUNT', KEYS[3], '(' .. ARGV[4], '+inf') >= tonumber(ARGV[7]) then return -1 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[6])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('PEXPIRE', KEYS[3], ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[4])
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

# Expired leases leave the online indexes; with a deadline in ARGV[2], up to ARGV[4] names on probation
# whose lease ended before it are released. The number released.
PRUNE = RELEASE_FUNCTION + """
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1000)
for _, name in ipairs(gone) do
  redis.call('ZREM', KEYS[1], name)
  redis.call('ZREM', KEYS[2], name)
end
if ARGV[2] == '' then return 0 end
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', '(' .. ARGV[2], 'LIMIT', 0, tonumber(ARGV[4]))
for _, name in ipairs(lapsed) do release(ARGV[3], name, ARGV[1]) end
return #lapsed
"""
