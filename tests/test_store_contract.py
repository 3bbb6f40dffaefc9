"""The store contract: the same specification runs against the in-memory store and a real redis-server."""

import pytest
import pytest_twisted

from p2pd.errors import (AlreadyMember, Forbidden, MailboxFull, NameTaken, NoSuchPeer, NoSuchRoom, NotMember,
                         RegistryFull, RoomExists, TooManyNames, TooManyRooms)
from p2pd.registry.store import GENERAL, MemoryStore

NOW = 1_700_000_000_000
TTL = 60


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    from tests.redis_helper import RedisServerProcess

    with RedisServerProcess(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(params=["memory", "redis"])
def store(request):
    if request.param == "memory":
        yield MemoryStore()
        return
    yield from fresh_redis_store(request.getfixturevalue("redis_server"))


@pytest.fixture
def redis_store(redis_server):
    """The Redis store alone, for what only Redis does."""
    yield from fresh_redis_store(redis_server)


def fresh_redis_store(server):
    from twisted.internet import reactor

    from p2pd.registry.redis_store import RedisStore

    store = RedisStore.from_url(server.url, reactor)
    pytest_twisted.blockon(store.flush_all_for_tests())
    pytest_twisted.blockon(store.ensure_general(NOW))
    yield store
    pytest_twisted.blockon(store.close())


def record(**extra):
    rec = {"tcp": ["127.0.0.1:4000"], "udp": ["127.0.0.1:4001"]}
    rec.update(extra)
    return rec


async def failure_of(d, kind):
    with pytest.raises(kind) as info:
        await d
    return info.value


@pytest_twisted.ensureDeferred
async def test_first_registration_claims_the_name(store):
    """The first registration of a name binds it to the key and reports that it was created."""
    assert await store.register("alice", "KEY-A", record(), NOW, TTL) is True
    entry = await store.get_peer("alice")
    assert (entry.name, entry.key, entry.record) == ("alice", "KEY-A", record())
    assert entry.online(NOW)


@pytest_twisted.ensureDeferred
async def test_same_key_updates_the_record(store):
    """A later registration with the same key updates the addresses and is not a creation."""
    await store.register("alice", "KEY-A", record(), NOW, TTL)
    assert await store.register("alice", "KEY-A", record(tcp=["127.0.0.1:5000"]), NOW + 1000, TTL) is False
    entry = await store.get_peer("alice")
    assert entry.record["tcp"] == ["127.0.0.1:5000"]


@pytest_twisted.ensureDeferred
async def test_another_key_cannot_take_the_name(store):
    """A registration with another key fails with NameTaken and leaves the owner's record untouched."""
    await store.register("alice", "KEY-A", record(), NOW, TTL)
    await failure_of(store.register("alice", "KEY-B", record(tcp=["6.6.6.6:1"]), NOW, TTL), NameTaken)
    entry = await store.get_peer("alice")
    assert (entry.key, entry.record) == ("KEY-A", record())


@pytest_twisted.ensureDeferred
async def test_unknown_peer_is_none(store):
    """Looking up a name nobody registered gives None."""
    assert await store.get_peer("nobody") is None


@pytest_twisted.ensureDeferred
async def test_lease_expires_but_name_stays_owned(store):
    """Without heartbeats the peer goes offline at its TTL; the name stays bound to its key."""
    await store.register("alice", "KEY-A", record(), NOW, TTL)
    entry = await store.get_peer("alice")
    assert entry.online(NOW + TTL * 1000 - 1)
    assert not entry.online(NOW + TTL * 1000)
    page, _ = await store.list_online(NOW + TTL * 1000, None, 10)
    assert page == []
    await failure_of(store.register("alice", "KEY-B", record(), NOW + TTL * 2000, TTL), NameTaken)


@pytest_twisted.ensureDeferred
async def test_heartbeat_renews_the_lease(store):
    """A heartbeat moves the lease expiry to now + TTL."""
    await store.register("alice", "KEY-A", record(), NOW, TTL)
    expiry = await store.heartbeat("alice", NOW + 50_000, TTL)
    assert expiry == NOW + 50_000 + TTL * 1000
    assert (await store.get_peer("alice")).online(NOW + 100_000)


@pytest_twisted.ensureDeferred
async def test_heartbeat_for_unknown_name_fails(store):
    """A heartbeat for a name that is not registered is NoSuchPeer."""
    await failure_of(store.heartbeat("ghost", NOW, TTL), NoSuchPeer)


@pytest_twisted.ensureDeferred
async def test_set_offline_ends_presence(store):
    """Going offline removes the peer from the online list at once."""
    await store.register("alice", "KEY-A", record(), NOW, TTL)
    await store.set_offline("alice")
    assert not (await store.get_peer("alice")).online(NOW)
    assert (await store.list_online(NOW, None, 10))[0] == []


@pytest_twisted.ensureDeferred
async def test_release_forgets_everything(store):
    """Releasing a name frees it for another key and removes it from rooms and its mailbox."""
    await store.register("alice", "KEY-A", record(), NOW, TTL)
    await store.create_room("g1", {"name": "G1", "creator": "alice", "created_at": NOW})
    await store.join_room("g1", "alice")
    await store.deposit("alice", {"id": "m1", "from": "bob", "payload": "hi"}, NOW, 100, 10)
    await store.release("alice", NOW)
    assert await store.get_peer("alice") is None
    assert (await store.get_room("g1")).members == []
    assert "alice" not in (await store.get_room(GENERAL)).members
    assert await store.fetch("alice", NOW, 10) == []
    assert await store.register("alice", "KEY-B", record(), NOW, TTL) is True


@pytest_twisted.ensureDeferred
async def test_online_list_is_paged_by_name(store):
    """The online list comes in name order, in pages, with a cursor until the last page."""
    for name in ["dave", "bob", "carol", "alice", "erin"]:
        await store.register(name, "K-" + name, record(), NOW, TTL)
    await store.set_offline("carol")
    page, cursor = await store.list_online(NOW, None, 2)
    assert [e.name for e in page] == ["alice", "bob"] and cursor == "bob"
    page, cursor = await store.list_online(NOW, cursor, 2)
    assert [e.name for e in page] == ["dave", "erin"] and cursor is None
    page, cursor = await store.list_online(NOW, "erin", 2)
    assert page == [] and cursor is None


@pytest_twisted.ensureDeferred
async def test_nonce_is_accepted_once(store):
    """A nonce is fresh the first time and a replay afterwards, until its TTL passes."""
    assert await store.use_nonce("alice", "n" * 16, NOW, 120) is True
    assert await store.use_nonce("alice", "n" * 16, NOW + 1000, 120) is False
    assert await store.use_nonce("bob", "n" * 16, NOW + 1000, 120) is True


@pytest_twisted.ensureDeferred
async def test_every_peer_is_in_general(store):
    """General always exists and every registered peer is a member of it."""
    await store.register("alice", "KEY-A", record(), NOW, TTL)
    await store.register("bob", "KEY-B", record(), NOW, TTL)
    general = await store.get_room(GENERAL)
    assert general.record["name"] == "General"
    assert general.members == ["alice", "bob"]


@pytest_twisted.ensureDeferred
async def test_room_lifecycle(store):
    """Rooms are created once, joined, listed with members and left."""
    await store.create_room("g1", {"name": "G1", "creator": "alice", "created_at": NOW})
    await failure_of(store.create_room("g1", {"name": "g1", "creator": "bob", "created_at": NOW}), RoomExists)
    await store.join_room("g1", "alice")
    await store.join_room("g1", "bob")
    await failure_of(store.join_room("g1", "bob"), AlreadyMember)
    room = await store.get_room("g1")
    assert room.record["name"] == "G1" and room.members == ["alice", "bob"]
    await store.leave_room("g1", "alice", NOW)
    await failure_of(store.leave_room("g1", "alice", NOW), NotMember)
    assert (await store.get_room("g1")).members == ["bob"]
    rooms, cursor = await store.list_rooms(None, 10)
    assert [r.name for r in rooms] == ["g1", GENERAL] and cursor is None


@pytest_twisted.ensureDeferred
async def test_missing_room(store):
    """Joining or leaving a room that does not exist is NoSuchRoom; looking it up gives None."""
    await failure_of(store.join_room("nope", "alice"), NoSuchRoom)
    await failure_of(store.leave_room("nope", "alice", NOW), NoSuchRoom)
    assert await store.get_room("nope") is None


@pytest_twisted.ensureDeferred
async def test_mailbox_deposit_fetch_ack(store):
    """Deposited messages come back oldest first until acknowledged."""
    for i in range(3):
        await store.deposit("bob", {"id": "m%d" % i, "from": "alice", "payload": "p%d" % i}, NOW + i, 100, 10)
    msgs = await store.fetch("bob", NOW + 10, 10)
    assert [m["payload"] for m in msgs] == ["p0", "p1", "p2"]
    assert await store.ack("bob", ["m0", "m2", "nope"]) == 2
    assert [m["id"] for m in await store.fetch("bob", NOW + 10, 10)] == ["m1"]


@pytest_twisted.ensureDeferred
async def test_mailbox_is_bounded_and_expires(store):
    """A full mailbox refuses more; expired messages neither count nor come back."""
    await store.deposit("bob", {"id": "a", "from": "x", "payload": ""}, NOW, 1, 2)
    await store.deposit("bob", {"id": "b", "from": "x", "payload": ""}, NOW, 100, 2)
    await failure_of(store.deposit("bob", {"id": "c", "from": "x", "payload": ""}, NOW, 100, 2), MailboxFull)
    await store.deposit("bob", {"id": "c", "from": "x", "payload": ""}, NOW + 1000, 100, 2)
    assert [m["id"] for m in await store.fetch("bob", NOW + 1000, 10)] == ["b", "c"]


@pytest_twisted.ensureDeferred
async def test_one_sender_cannot_fill_a_mailbox(store):
    """Issue 12, finding 7: any registered peer could fill a victim's mailbox (1,000 deposits in 48 s) and
    honest senders then got 409. A sender gets a share of it; acknowledged or expired ones free its slots."""
    for i in range(3):
        await store.deposit("bob", {"id": "x%d" % i, "from": "mallory", "payload": ""}, NOW, 100, 10, 3)
    error = await failure_of(store.deposit("bob", {"id": "x9", "from": "mallory", "payload": ""}, NOW, 100, 10, 3),
                             MailboxFull)
    assert "holds 3 messages from you" in error.message
    await store.deposit("bob", {"id": "a0", "from": "alice", "payload": "hi"}, NOW, 100, 10, 3)
    assert await store.ack("bob", ["x0"]) == 1
    await store.deposit("bob", {"id": "x3", "from": "mallory", "payload": ""}, NOW, 100, 10, 3)
    await store.deposit("carol", {"id": "y0", "from": "mallory", "payload": ""}, NOW, 1, 10, 1)
    await store.deposit("carol", {"id": "y1", "from": "mallory", "payload": ""}, NOW + 1000, 100, 10, 1)
    assert sorted(m["id"] for m in await store.fetch("bob", NOW, 10)) == ["a0", "x1", "x2", "x3"]


@pytest_twisted.ensureDeferred
async def test_prune_runs_clean(store):
    """Pruning expired state leaves live state alone."""
    await store.register("alice", "KEY-A", record(), NOW, TTL)
    await store.deposit("alice", {"id": "m", "from": "x", "payload": ""}, NOW, 100, 10)
    await store.prune(NOW + 5000)
    assert (await store.get_peer("alice")).key == "KEY-A"
    assert len(await store.fetch("alice", NOW + 5000, 10)) == 1


# Issue 12, items 7 and 8: quotas, probation, room ownership and idle rooms, memory.

HOUR = 3600 * 1000


@pytest_twisted.ensureDeferred
async def test_one_key_owns_at_most_max_names(store):
    """A key at its quota cannot claim another name (TooManyNames), but still updates the ones it owns; a release
    gives the slot back, and other keys are not affected."""
    for i in range(3):
        assert await store.register("name%d" % i, "KEY-A", record(), NOW, TTL, max_names=3) is True
    error = await failure_of(store.register("name3", "KEY-A", record(), NOW, TTL, max_names=3), TooManyNames)
    assert "3 names" in error.message
    assert await store.get_peer("name3") is None
    assert await store.register("name1", "KEY-A", record(tcp=["10.0.0.1:1"]), NOW + 1, TTL, max_names=3) is False
    assert await store.register("other", "KEY-B", record(), NOW, TTL, max_names=3) is True
    await store.release("name0", NOW)
    assert await store.register("name3", "KEY-A", record(), NOW, TTL, max_names=3) is True


async def lapse(store, now, probation=600):
    """Prune at *now* with a probation of *probation* seconds; the number of names released."""
    return await store.prune(now, probation)


@pytest_twisted.ensureDeferred
async def test_a_name_never_renewed_is_released_after_its_probation(store):
    """A claim without a heartbeat is kept until its lease has been over for the probation, then released as
    completely as DELETE /v1/peers/{name} would: record, key slot, General, rooms, ownership, mailbox."""
    await store.register("squat", "KEY-S", record(), NOW, TTL, max_names=1)
    await store.create_room("den", {"name": "Den", "creator": "squat", "created_at": NOW})
    await store.join_room("den", "squat")
    await store.deposit("squat", {"id": "m1", "from": "bob", "payload": "hi"}, NOW, 100, 10)
    expiry = NOW + TTL * 1000
    assert await lapse(store, expiry + 600 * 1000) == 0
    assert await store.get_peer("squat") is not None
    assert await lapse(store, expiry + 600 * 1000 + 1) == 1
    assert await store.get_peer("squat") is None
    assert "squat" not in (await store.get_room(GENERAL)).members
    den = await store.get_room("den")
    assert den.members == [] and den.owner is None
    assert await store.fetch("squat", NOW, 10) == []
    assert await store.register("another", "KEY-S", record(), NOW, TTL, max_names=1) is True


@pytest_twisted.ensureDeferred
async def test_a_heartbeat_ends_probation(store):
    """One heartbeat makes a name established: it is kept however long it is offline afterwards."""
    await store.register("alice", "KEY-A", record(), NOW, TTL)
    await store.heartbeat("alice", NOW + 20_000, TTL)
    assert await lapse(store, NOW + 400 * HOUR) == 0
    assert (await store.get_peer("alice")).key == "KEY-A"


@pytest_twisted.ensureDeferred
async def test_registering_again_after_the_lease_ends_probation(store):
    """A registration by the owner once the lease ran out ends probation; one within the lease does not, it only
    moves the deadline to the new lease."""
    await store.register("early", "KEY-E", record(), NOW, TTL)
    await store.register("early", "KEY-E", record(), NOW + 30_000, TTL)  # within the lease
    assert await lapse(store, NOW + 30_000 + TTL * 1000 + 600 * 1000) == 0
    assert await lapse(store, NOW + 30_000 + TTL * 1000 + 600 * 1000 + 1) == 1
    await store.register("late", "KEY-L", record(), NOW, TTL)
    await store.register("late", "KEY-L", record(), NOW + TTL * 1000 + 5000, TTL)  # after the lease
    assert await lapse(store, NOW + 400 * HOUR) == 0
    assert await store.get_peer("late") is not None


@pytest_twisted.ensureDeferred
async def test_prune_without_probation_releases_nothing(store):
    """Without a probation (an older caller) prune only drops expired presence."""
    await store.register("alice", "KEY-A", record(), NOW, TTL)
    assert await store.prune(NOW + 400 * HOUR) == 0
    assert await store.get_peer("alice") is not None


@pytest_twisted.ensureDeferred
async def test_release_empties_the_senders_quota_of_its_mailbox(store):
    """A mailbox released with its name takes its per-sender counts along: a sender that had filled its share
    can write to whoever claims the name next (bug: in Redis the per-sender sets stayed for 7 days)."""
    await store.register("bob", "KEY-B", record(), NOW, TTL)
    for i in range(2):
        await store.deposit("bob", {"id": "x%d" % i, "from": "mallory", "payload": ""}, NOW, 100, 10, 2)
    await store.release("bob", NOW)
    await store.register("bob", "KEY-B2", record(), NOW, TTL)
    await store.deposit("bob", {"id": "y0", "from": "mallory", "payload": ""}, NOW, 100, 10, 2)
    assert [m["id"] for m in await store.fetch("bob", NOW, 10)] == ["y0"]


def room_record(creator, at=NOW, display=None):
    return {"name": display or "R", "creator": creator, "created_at": at}


@pytest_twisted.ensureDeferred
async def test_a_room_is_owned_by_its_creator_until_it_releases_its_name(store):
    """The creator owns the room; once it releases its name the room lives on, owned by nobody (a later owner of
    the name does not inherit it)."""
    await store.register("alice", "KEY-A", record(), NOW, TTL)
    await store.create_room("r1", room_record("alice"))
    await store.join_room("r1", "alice")
    assert (await store.get_room("r1")).owner == "alice"
    assert [r.owner for r in (await store.list_rooms(None, 10))[0]] == [None, "alice"]  # general, r1
    await store.release("alice", NOW)
    await store.register("alice", "KEY-X", record(), NOW, TTL)
    room = await store.get_room("r1")
    assert room is not None and room.owner is None
    await failure_of(store.delete_room("r1", owner="alice"), Forbidden)


@pytest_twisted.ensureDeferred
async def test_one_name_owns_at_most_max_rooms(store):
    """Past its quota a name's next room is TooManyRooms; deleting one of its rooms gives the slot back."""
    for i in range(2):
        await store.create_room("r%d" % i, room_record("alice"), max_rooms=2)
    error = await failure_of(store.create_room("r2", room_record("alice"), max_rooms=2), TooManyRooms)
    assert "alice owns 2 rooms" in error.message
    assert await store.get_room("r2") is None
    await store.create_room("r2", room_record("bob"), max_rooms=2)
    await failure_of(store.create_room("r0", room_record("bob"), max_rooms=2), RoomExists)
    await store.delete_room("r0", owner="alice")
    await store.create_room("r3", room_record("alice"), max_rooms=2)


@pytest_twisted.ensureDeferred
async def test_only_the_owner_deletes_a_room_with_its_memberships(store):
    """delete_room with an owner checks it (Forbidden for anyone else, NoSuchRoom for a room that is not there);
    deleting drops the room and its members, and a room of that name can be made afresh."""
    for name in ("alice", "bob"):
        await store.register(name, "K-" + name, record(), NOW, TTL)
    await store.create_room("r1", room_record("alice"))
    await store.join_room("r1", "alice")
    await store.join_room("r1", "bob")
    error = await failure_of(store.delete_room("r1", owner="bob"), Forbidden)
    assert "only the owner of room R" in error.message
    await store.delete_room("r1", owner="alice")
    assert await store.get_room("r1") is None
    await failure_of(store.delete_room("r1", owner="alice"), NoSuchRoom)
    await store.create_room("r1", room_record("bob"))
    assert (await store.get_room("r1")).members == []
    await store.release("alice", NOW)  # its stale membership, if any were left, must not touch the new room
    assert (await store.get_room("r1")).owner == "bob"


@pytest_twisted.ensureDeferred
async def test_online_members_of_a_room(store):
    """get_room(online_at=now) lists only the members whose lease runs past now, General included, and still
    counts all of them."""
    for name in ("alice", "bob", "carol"):
        await store.register(name, "K-" + name, record(), NOW, TTL)
    await store.create_room("r1", room_record("alice"))
    for name in ("alice", "bob", "carol"):
        await store.join_room("r1", name)
    await store.set_offline("bob")
    await store.heartbeat("carol", NOW + TTL * 1000, TTL)
    later = NOW + TTL * 1000 + 1
    for room in ("r1", GENERAL):
        entry = await store.get_room(room, online_at=later)
        assert entry.members == ["carol"] and entry.member_count == 3, room
        now_entry = await store.get_room(room, online_at=NOW)
        assert now_entry.members == ["alice", "carol"], room
    assert (await store.get_room("r1")).members == ["alice", "bob", "carol"]


async def prune_all_rooms(store, now, empty=3600, idle=30 * 86400, page=2):
    """Walk every room once with pages of *page*; the rooms deleted."""
    deleted, cursor = [], None
    while True:
        gone, cursor = await store.prune_rooms(now, cursor, page, empty, idle)
        deleted += gone
        if cursor is None:
            return sorted(deleted)


@pytest_twisted.ensureDeferred
async def test_empty_rooms_go_after_the_empty_expiry(store):
    """A room with no members is deleted once it has been empty for the expiry, counted from its creation or
    from its last member leaving; a joined room and General stay."""
    await store.register("alice", "KEY-A", record(), NOW, TTL)
    await store.create_room("never", room_record("alice", display="Never"))
    await store.create_room("left", room_record("alice", display="Left"))
    await store.join_room("left", "alice")
    await store.leave_room("left", "alice", NOW + 1800 * 1000)
    await store.create_room("busy", room_record("alice", display="Busy"))
    await store.join_room("busy", "alice")
    assert await prune_all_rooms(store, NOW + 3600 * 1000) == []
    assert await prune_all_rooms(store, NOW + 3600 * 1000 + 1) == ["never"]
    assert await prune_all_rooms(store, NOW + 5400 * 1000 + 1) == ["left"]
    assert sorted(r.name for r in (await store.list_rooms(None, 10))[0]) == ["busy", GENERAL]


@pytest_twisted.ensureDeferred
async def test_rooms_whose_members_stay_offline_go_after_the_idle_expiry(store):
    """A room none of whose members is seen online for the idle expiry is deleted, with its memberships and its
    owner's slot; a member seen online by the pruner keeps it, from then on."""
    for name in ("alice", "bob"):
        await store.register(name, "K-" + name, record(), NOW, TTL)
    await store.create_room("quiet", room_record("alice", display="Quiet"), max_rooms=2)
    await store.create_room("lively", room_record("alice", display="Lively"), max_rooms=2)
    await store.join_room("quiet", "alice")
    await store.join_room("lively", "bob")
    day = 86400 * 1000
    assert await prune_all_rooms(store, NOW + 1000) == []  # both members online: active now
    await store.heartbeat("bob", NOW + 20 * day, TTL)
    assert await prune_all_rooms(store, NOW + 20 * day + 1000) == []  # bob online: lively active
    assert await prune_all_rooms(store, NOW + 30 * day + 1001) == ["quiet"]
    assert await store.get_room("quiet") is None
    await store.create_room("third", room_record("alice", display="Third"), max_rooms=2)  # the slot came back
    await store.delete_room("third", owner="alice")
    assert await prune_all_rooms(store, NOW + 50 * day + 1000) == []
    assert await prune_all_rooms(store, NOW + 50 * day + 1001) == ["lively"]


@pytest_twisted.ensureDeferred
async def test_room_pruning_walks_the_rooms_a_page_at_a_time(store):
    """prune_rooms looks at one page and hands back the cursor of the next, None after the last."""
    for i in range(5):
        await store.create_room("r%d" % i, room_record("alice"))
    gone, cursor = await store.prune_rooms(NOW, None, 2, 3600, 86400)
    assert gone == [] and cursor == "r0"  # general, r0
    gone, cursor = await store.prune_rooms(NOW + 3601 * 1000, cursor, 2, 3600, 86400)
    assert gone == ["r1", "r2"] and cursor == "r2"
    gone, cursor = await store.prune_rooms(NOW + 3601 * 1000, cursor, 2, 3600, 86400)
    assert gone == ["r3", "r4"] and cursor is None


@pytest_twisted.ensureDeferred
async def test_memory_reports_use_and_maximum(store):
    """memory() says how many bytes the store holds, its maximum (0: none) and its policy."""
    info = await store.memory()
    assert set(info) == {"used", "max", "policy"}
    assert info["used"] >= 0 and info["max"] >= 0



@pytest_twisted.ensureDeferred
async def test_a_write_redis_refuses_at_its_maxmemory_is_registry_full(redis_store):
    """At its maxmemory (noeviction) Redis answers OOM to writes: that is RegistryFull (507, retry later), not a
    store outage; reads still work."""
    await redis_store.register("alice", "KEY-A", record(), NOW, TTL)
    await redis_store._call("CONFIG", "SET", "maxmemory", "1")
    try:
        error = await failure_of(redis_store.deposit("alice", {"id": "m", "from": "x", "payload": ""}, NOW, 100, 10),
                                 RegistryFull)
        assert error.status == 507 and error.retry_after > 0
        assert (await redis_store.get_peer("alice")).key == "KEY-A"
    finally:
        await redis_store._call("CONFIG", "SET", "maxmemory", "0")


@pytest_twisted.ensureDeferred
async def test_deleting_a_room_leaves_no_index_entries(redis_store):
    """A deleted room leaves nothing behind in its members' memberof sets or its owner's owned set."""
    from p2pd.registry import schema

    await redis_store.register("alice", "KEY-A", record(), NOW, TTL)
    await redis_store.create_room("r1", room_record("alice"))
    await redis_store.join_room("r1", "alice")
    await redis_store.delete_room("r1", owner="alice")
    assert await redis_store._call("SMEMBERS", schema.memberof("alice")) == [GENERAL.encode()]
    assert await redis_store._call("EXISTS", schema.owned("alice"), schema.room("r1"), schema.members("r1")) == 0
