"""The store contract: the same specification runs against the in-memory store and a real redis-server."""

import pytest
import pytest_twisted

from p2pd.errors import AlreadyMember, MailboxFull, NameTaken, NoSuchPeer, NoSuchRoom, NotMember, RoomExists
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
    from twisted.internet import reactor

    from p2pd.registry.redis_store import RedisStore

    server = request.getfixturevalue("redis_server")
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
    await store.release("alice")
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
    await store.leave_room("g1", "alice")
    await failure_of(store.leave_room("g1", "alice"), NotMember)
    assert (await store.get_room("g1")).members == ["bob"]
    rooms, cursor = await store.list_rooms(None, 10)
    assert [r.name for r in rooms] == ["g1", GENERAL] and cursor is None


@pytest_twisted.ensureDeferred
async def test_missing_room(store):
    """Joining or leaving a room that does not exist is NoSuchRoom; looking it up gives None."""
    await failure_of(store.join_room("nope", "alice"), NoSuchRoom)
    await failure_of(store.leave_room("nope", "alice"), NoSuchRoom)
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
