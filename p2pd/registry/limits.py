"""The limits that hold hostile peers off the registry (issue 12, items 7 and 8), in one place, each with its
default.

Set them with ``--limits NAME=VALUE,NAME=VALUE`` (or ``limits = ...`` in the ``[registry]`` section of a config
file); :mod:`p2pd.core.limits` parses them, the README's "Registry limits" says what a user sees when one is hit.
Durations are seconds, sizes take K, M, G suffixes (powers of 1024), shares are fractions of Redis' maxmemory.

* A key owns at most ``names-per-key`` names, and one client address claims at most
  ``claims-per-address-per-hour`` new names: squatting many names takes many keys *and* many addresses.
* A new name is on probation until its owner comes back (a heartbeat, or a registration after its lease ran out);
  one whose lease has been over for ``probation`` seconds while still on probation is released, so names claimed
  by a script that never returns do not stay taken.
* A name owns at most ``rooms-per-owner`` rooms; a room nobody is in goes after ``room-empty-expiry``, one whose
  members have all been offline for ``room-idle-expiry``.
* The embedded Redis gets ``redis-maxmemory`` with ``noeviction`` (it never drops a claim to make room). Above
  ``mailbox-memory-share`` of the maxmemory new mailbox deposits are refused, above ``claims-memory-share`` new
  names and rooms too, so that heartbeats and updates of existing claims always find room.
"""

import dataclasses
from dataclasses import field

from p2pd.core.limits import LimitsError, parse_limits

SHARE = {"min": 0.05, "max": 1}
MIN_MAXMEMORY = 4 << 20


@dataclasses.dataclass(frozen=True)
class RegistryLimits:
    names_per_key: int = 8  # names one public key may own
    claims_per_address_per_hour: int = 30  # new names claimed from one client address (IPv6: one /64) an hour
    probation: float = 600.0  # seconds past its lease that a never-renewed new name is kept
    rooms_per_owner: int = 20  # existing rooms one name may own (have created)
    room_empty_expiry: float = 3600.0  # seconds a room with no members is kept
    room_idle_expiry: float = 30 * 86400.0  # seconds a room is kept while none of its members is online
    redis_maxmemory: int = field(default=256 << 20, metadata={"min": 0})  # embedded Redis only; 0 = no maximum
    mailbox_memory_share: float = field(default=0.75, metadata=SHARE)  # of maxmemory: deposits refused above
    claims_memory_share: float = field(default=0.9, metadata=SHARE)  # of maxmemory: new names and rooms refused


def parse_registry_limits(text) -> RegistryLimits:
    """The registry's ``--limits`` text -> RegistryLimits; LimitsError for anything wrong."""
    limits = parse_limits(text, RegistryLimits)
    if limits.mailbox_memory_share > limits.claims_memory_share:
        raise LimitsError("limit mailbox-memory-share (%g) must not be above claims-memory-share (%g): deposits "
                          "would crowd out new names" % (limits.mailbox_memory_share, limits.claims_memory_share))
    if 0 < limits.redis_maxmemory < MIN_MAXMEMORY:
        raise LimitsError("limit redis-maxmemory must be 0 (no maximum) or at least 4M, not %d bytes: an empty "
                          "Redis already takes about 1M" % limits.redis_maxmemory)
    return limits
