"""The whole Redis key schema of the registry, and its lifetimes, in one place.

Every key starts with ``p2pd:v1:`` so a shared Redis can hold other data and a later schema can live beside
this one. Names and rooms inside keys are always canonical (see :mod:`p2pd.core.names`).

=====================================  ======  ==========================================================
key                                    type    meaning
=====================================  ======  ==========================================================
p2pd:v1:peer:{name}                    hash    ``key`` (owner's public key, set once by HSETNX), ``record``
                                               (JSON), ``lease`` (expiry, ms since epoch)
p2pd:v1:names                          zset    every owned name, score 0 (lexicographic paging)
p2pd:v1:key:{key}                      set     the names *key* owns (its ``names-per-key`` quota)
p2pd:v1:probation                      zset    new names not renewed yet -> lease expiry in ms (the pruner
                                               releases those whose lease is ``probation`` seconds over)
p2pd:v1:online                         zset    name -> lease expiry in ms (the pruner's index)
p2pd:v1:online-names                   zset    names with a lease, score 0 (lexicographic paging)
p2pd:v1:nonce:{name}:{nonce}           string  a nonce seen in a signed request; expires after NONCE_TTL
p2pd:v1:rooms                          zset    every room's canonical name, score 0
p2pd:v1:room:{room}                    hash    ``record`` (JSON: name as created, creator, created_at),
                                               ``owner`` (the creator while it keeps its name; absent after),
                                               ``empty_since`` (ms, while it has no members), ``active_at``
                                               (ms, when the pruner last saw a member online)
p2pd:v1:members:{room}                 set     member names
p2pd:v1:memberof:{name}                set     rooms (canonical) the name is in, to clean up on release
p2pd:v1:owned:{name}                   set     rooms (canonical) the name owns (its ``rooms-per-owner`` quota)
p2pd:v1:mbox:{name}                    zset    message id -> expiry in ms (oldest first)
p2pd:v1:mbox:{name}:{id}               string  JSON message; Redis expires it at its TTL
p2pd:v1:mbox:{name}:from:{sender}      zset    the ids of *sender*'s messages in it -> expiry (its quota)
=====================================  ======  ==========================================================
"""

PREFIX = "p2pd:v1:"

LEASE_TTL = 60  # seconds of presence granted by a registration or heartbeat
NONCE_TTL = 2 * 60 + 5  # twice the signature window (p2pd.core.signing.WINDOW), plus slack
MAILBOX_TTL = 7 * 24 * 3600
MAILBOX_MAX_MESSAGES = 1000  # per recipient
MAILBOX_MAX_PER_SENDER = 200  # of those, from one sender: no one fills another's mailbox
MAILBOX_MAX_BYTES = 64 * 1024  # per message payload


def peer(name: str) -> str:
    return PREFIX + "peer:" + name


NAMES = PREFIX + "names"
PROBATION = PREFIX + "probation"
ONLINE = PREFIX + "online"
ONLINE_NAMES = PREFIX + "online-names"
ROOMS = PREFIX + "rooms"


def nonce(name: str, value: str) -> str:
    return PREFIX + "nonce:" + name + ":" + value


def room(name: str) -> str:
    return PREFIX + "room:" + name


def members(name: str) -> str:
    return PREFIX + "members:" + name


def memberof(name: str) -> str:
    return PREFIX + "memberof:" + name


def owner_key(key: str) -> str:
    return PREFIX + "key:" + key


def owned(name: str) -> str:
    return PREFIX + "owned:" + name


def mailbox(name: str) -> str:
    return PREFIX + "mbox:" + name


def message(name: str, msg_id: str) -> str:
    return PREFIX + "mbox:" + name + ":" + msg_id


def mailbox_from(name: str, sender: str) -> str:
    return PREFIX + "mbox:" + name + ":from:" + sender
