"""The registry's limits against hostile peers (issue 12, items 7 and 8) as a specification: the limits and their
option, quotas on names and rooms, the probation of new names, idle rooms, a room's online members, and what a
nearly full store refuses. In process (the Klein resource through StubTreq over a MemoryStore and a Clock), but
for one end-to-end test that fills a real registry's small embedded Redis."""

import json
import time

import pytest
import pytest_twisted
import requests
from twisted.internet.defer import succeed

from p2pd import errors, tap
from p2pd.core import jsonbody, signing
from p2pd.core.limits import parse_limits
from p2pd.peer.presence import Presence
from p2pd.registry.claims import ClaimQuota, address_group
from p2pd.registry.limits import RegistryLimits
from p2pd.registry.service import Pruner
from tests.registry_process import RegistryProcess
from tests.test_registry_api import World, fails_with, signed_put


def world_with(**limits):
    return World(read_rate=0, write_rate=0, limits=RegistryLimits(**limits))


@pytest.fixture
def world():
    return world_with()


async def prune(world, limits=RegistryLimits()):
    """One tick of the registry's pruner, now."""
    await Pruner(world.store, world.clock, limits).tick()


async def refused(d, status, code):
    """The error *d* fails with, checked to be *status* with *code*."""
    with pytest.raises(errors.P2PDError) as info:
        await d
    assert (info.value.status, info.value.code) == (status, code), info.value.message
    return info.value


# -- the limits and their option -----------------------------------------------------------------------------------

def test_the_defaults():
    """The registry's defaults are the ones the README documents."""
    limits = RegistryLimits()
    assert (limits.names_per_key, limits.claims_per_address_per_hour, limits.probation) == (8, 30, 600)
    assert (limits.rooms_per_owner, limits.room_empty_expiry, limits.room_idle_expiry) == (20, 3600, 30 * 86400)
    assert (limits.redis_maxmemory, limits.mailbox_memory_share, limits.claims_memory_share) == (256 << 20, 0.75, 0.9)


def test_limits_come_from_the_command_line_or_the_config_file(tmp_path):
    """--limits NAME=VALUE,... changes the named limits (sizes with K/M/G); `limits =` in [registry] does too."""
    options = tap.Options()
    options.parseOptions(["--role=registry", "--data-dir", str(tmp_path), "--limits",
                          " Names-Per-Key = 2, redis-maxmemory=64M ,mailbox-memory-share=0.5"])
    assert options["limits"] == RegistryLimits(names_per_key=2, redis_maxmemory=64 << 20, mailbox_memory_share=0.5)
    conf = tmp_path / "r.ini"
    conf.write_text("[p2pd]\nrole = registry\n[registry]\nlimits = rooms-per-owner=3,probation=60\n")
    options = tap.Options()
    options.parseOptions(["--config", str(conf), "--data-dir", str(tmp_path)])
    assert options["limits"] == RegistryLimits(rooms_per_owner=3, probation=60.0)
    options = tap.Options()
    options.parseOptions(["--role=registry", "--data-dir", str(tmp_path)])
    assert options["limits"] == RegistryLimits()


@pytest.mark.parametrize("text, message", [
    ("names-per-kee=3", "unknown limit 'names-per-kee'; the limits are: claims-memory-share, claims-per-address-"),
    ("unverified=5", "unknown limit 'unverified'"),  # a peer's limit is not a registry's
    ("names-per-key=2.5", "limit names-per-key must be a whole number"),
    ("names-per-key=0", "limit names-per-key must be at least 1"),
    ("probation=soon", "not a number"),
    ("mailbox-memory-share=2", "limit mailbox-memory-share must be at most 1"),
    ("claims-memory-share=0", "limit claims-memory-share must be at least 0.05"),
    ("mailbox-memory-share=0.95", "must not be above claims-memory-share (0.9)"),
    ("redis-maxmemory=1M", "redis-maxmemory must be 0 (no maximum) or at least 4M"),
])
def test_bad_limits_are_one_line_errors(tmp_path, text, message):
    """A bad --limits ends option parsing with a message that says what is wrong (and which limits exist)."""
    with pytest.raises(SystemExit) as info:
        tap.Options().parseOptions(["--role=registry", "--data-dir", str(tmp_path), "--limits", text])
    assert "--limits: " in str(info.value) and message in str(info.value)


def test_one_parser_serves_both_roles():
    """The registry's parser reads the peer's limits exactly as the peer's own parser does, so the two can be one."""
    from p2pd.peer.limits import Limits
    from p2pd.peer.limits import parse_limits as peer_parse

    text = "unverified=1K, offer-expiry=90, bytes-per-second=2M"
    assert parse_limits(text, Limits) == peer_parse(text)


# -- names per key and claims per address --------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_one_key_claims_at_most_names_per_key_names(world):
    """Issue 12, item 8: one key claimed names without end. Now its 9th new name is 403 too_many_names saying the
    limit; the names it owns still update, and a release gives a slot back."""
    key = signing.Identity.generate()
    for i in range(8):
        await world.client("squat%d" % i, key).register()
    error = await refused(world.client("squat8", key).register(), 403, "too_many_names")
    assert "8 names" in error.message
    await fails_with(world.client("x").lookup("squat8"), errors.NotFound)
    for i in range(8):
        assert (await world.client("squat%d" % i, key).register(tcp=["10.0.0.1:1"]))["tcp"] == ["10.0.0.1:1"]
    await world.client("squat0", key).release()
    await world.client("squat8", key).register()


@pytest_twisted.ensureDeferred
async def test_new_names_from_one_address_are_rate_limited(world):
    """Issue 12, item 8: fresh keys made fresh names without end. Now one address claims 30 new names an hour;
    the 31st is 429 too_many_claims with Retry-After, while re-registering the names it has is never counted."""
    clients = [world.client("fresh%02d" % i) for i in range(31)]
    for client in clients[:30]:
        await client.register()
    error = await refused(clients[30].register(), 429, "too_many_claims")
    assert "30 new names" in error.message and error.retry_after == 120  # one claim every 3600/30 s
    for client in clients[:30]:
        await client.register()  # updates: 200, not counted
    response = await signed_put(world, clients[30], {"key": clients[30].identity.public_text})
    assert response.code == 429 and response.headers.getRawHeaders("Retry-After") == ["120"]
    world.clock.advance(120)
    await clients[30].register()
    await refused(world.client("fresh31").register(), 429, "too_many_claims")


def test_claims_are_counted_per_address_and_per_ipv6_64():
    """Each IPv4 address has its own allowance; an IPv6 address shares one with its /64 (the block one machine
    usually gets), and an IPv4-mapped one counts as its IPv4 address."""
    quota = ClaimQuota(2)
    for host in ("203.0.113.1", "::ffff:203.0.113.1"):
        quota.admit(host, 0)
    with pytest.raises(errors.TooManyClaims):
        quota.admit("203.0.113.1", 0)
    quota.admit("203.0.113.2", 0)
    quota.admit("2001:db8::1", 0)
    quota.admit("2001:db8::ffff:2", 0)
    with pytest.raises(errors.TooManyClaims):
        quota.admit("2001:db8::3", 0)
    quota.admit("2001:db8:0:1::1", 0)
    assert address_group("2001:db8::1") == "2001:db8::/64" and address_group("local") == "local"


# -- probation -----------------------------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_a_name_never_renewed_is_released_after_its_probation(world):
    """Issue 12, item 8: claimed names stayed taken for ever. A name whose owner never comes back after the claim
    is released by the pruner once its lease has been over for `probation` seconds (600), and is free again."""
    await world.client("squatter").register()
    world.clock.advance(60 + 600)  # lease, then probation
    await prune(world)
    assert (await world.client("x").lookup("squatter"))["online"] is False
    world.clock.advance(1)
    await prune(world)
    await fails_with(world.client("x").lookup("squatter"), errors.NotFound)
    assert "squatter" not in (await world.client("x").room("General"))["members"]
    await world.client("squatter").register()  # anyone's now


class PresenceHost:
    """What Presence needs of the daemon, as p2pd.peer.daemon does it: register with PUT, heartbeat every third
    of the lease the registry granted."""

    def __init__(self, client, clock):
        self.registry, self.clock, self.name = client, clock, client.name
        self.changes = []

    def register(self):
        return self.registry.register(tcp=["127.0.0.1:7000"])

    def heartbeat_interval(self, record):
        return max(2.0, (record["lease_expires"] / 1000.0 - self.clock.seconds()) / 3.0)

    def registry_changed(self, state, message):
        self.changes.append(state)


@pytest_twisted.ensureDeferred
async def test_a_peer_kept_online_by_presence_keeps_its_name(world):
    """A peer as p2pd runs it (Presence: PUT, then a heartbeat every lease/3) is established by its first
    heartbeat: it keeps its name through hours of pruning, and after going offline for a day."""
    client = world.client("honest")
    presence = Presence(PresenceHost(client, world.clock), client, world.clock, on_fatal=pytest.fail)
    presence.startService()
    for _ in range(2 * 3600 // 15):
        world.clock.advance(15)
        await prune(world)
    assert (await world.client("x").lookup("honest"))["online"] is True
    await presence.stopService()
    assert (await world.client("x").lookup("honest"))["online"] is False
    world.clock.advance(86400)
    await prune(world)
    assert (await world.client("x").lookup("honest"))["key"] == client.identity.public_text


@pytest_twisted.ensureDeferred
async def test_a_peer_that_comes_back_after_its_lease_keeps_its_name(world):
    """A peer stopped before its first heartbeat that registers again after its lease ran out (a restart) is
    established too."""
    client = world.client("restarted")
    await client.register()
    world.clock.advance(300)
    await client.register()
    world.clock.advance(86400)
    await prune(world)
    assert (await world.client("x").lookup("restarted"))["key"] == client.identity.public_text


# -- rooms ---------------------------------------------------------------------------------------------------------

async def registered(world, *names):
    """Clients for *names*, registered and heartbeating once, as honest peers do (so established)."""
    clients = [world.client(name) for name in names]
    for client in clients:
        await client.register()
        await client.heartbeat()
    return clients


@pytest_twisted.ensureDeferred
async def test_the_owner_deletes_its_room_and_nobody_else_can(world):
    """DELETE /v1/rooms/{room} signed by the room's owner deletes it with its memberships; anyone else gets 403,
    a room that is not there 404."""
    alice, bob = await registered(world, "alice", "bob")
    created = await alice.create_room("Lobby")
    assert created["owner"] == created["creator"] == "alice"
    await bob.join("Lobby")
    error = await refused(bob.delete_room("lobby"), 403, "forbidden")
    assert "only the owner of room Lobby" in error.message
    assert await alice.delete_room("LOBBY") == {"id": "lobby", "deleted": True}
    await fails_with(bob.room("Lobby"), errors.NotFound, "unknown_room")
    await refused(alice.delete_room("Lobby"), 404, "unknown_room")
    assert (await bob.create_room("Lobby"))["members"] == ["bob"]  # bob's old membership went with the room


@pytest_twisted.ensureDeferred
async def test_general_cannot_be_deleted(world):
    """General is nobody's: deleting it is 403, whoever signs."""
    alice, = await registered(world, "alice")
    error = await refused(alice.delete_room("General"), 403, "forbidden")
    assert "General" in error.message
    assert (await alice.room("general"))["owner"] is None


@pytest_twisted.ensureDeferred
async def test_a_room_outlives_its_owner_name_owned_by_nobody(world):
    """When the owner releases its name the room lives on with no owner; whoever claims the name next does not
    own it."""
    alice, bob = await registered(world, "alice", "bob")
    await alice.create_room("Lobby")
    await bob.join("Lobby")
    await alice.release()
    room = await bob.room("Lobby")
    assert (room["owner"], room["creator"], room["members"]) == (None, "alice", ["bob"])
    new_alice, = await registered(world, "alice")
    await refused(new_alice.delete_room("Lobby"), 403, "forbidden")


@pytest_twisted.ensureDeferred
async def test_one_name_owns_at_most_rooms_per_owner_rooms(world):
    """Issue 12, item 8: one peer made rooms without end. Its 21st room is 403 too_many_rooms saying the limit;
    deleting one makes room for another."""
    alice, = await registered(world, "alice")
    for i in range(20):
        await alice.create_room("room%02d" % i)
    error = await refused(alice.create_room("room20"), 403, "too_many_rooms")
    assert "owns 20 rooms" in error.message
    await alice.delete_room("room00")
    await alice.create_room("room20")


@pytest_twisted.ensureDeferred
async def test_empty_and_idle_rooms_are_deleted_by_the_pruner(world):
    """A room nobody is in goes after an hour; a room whose members all stay offline goes after 30 days; a room
    with a member online stays, and so does General."""
    alice, bob = await registered(world, "alice", "bob")
    await alice.create_room("Empty", join=False)
    await alice.create_room("Idle")
    await bob.create_room("Busy")
    await alice.go_offline()
    world.clock.advance(3600)
    await prune(world)
    assert {r["name"] for r in (await bob.rooms())["rooms"]} == {"Empty", "Idle", "Busy", "General"}
    world.clock.advance(1)
    await prune(world)
    assert {r["name"] for r in (await bob.rooms())["rooms"]} == {"Idle", "Busy", "General"}
    for _ in range(30):
        world.clock.advance(86400)
        await bob.heartbeat()
        await prune(world)
    assert {r["name"] for r in (await bob.rooms())["rooms"]} == {"Busy", "General"}


@pytest_twisted.ensureDeferred
async def test_room_online_lists_only_the_members_online_now(world):
    """GET /v1/rooms/{room}?online=true (RegistryClient.room_online) lists only the members online now, in General
    too, and still counts them all; any other value of `online` is 400."""
    alice, bob, carol = await registered(world, "alice", "bob", "carol")
    await alice.create_room("Lobby")
    await bob.join("Lobby")
    await carol.join("Lobby")
    await bob.go_offline()
    for room in ("Lobby", "General"):
        view = await alice.room_online(room)
        assert (view["members"], view["member_count"]) == (["alice", "carol"], 3), room
    assert (await alice.room("Lobby"))["members"] == ["alice", "bob", "carol"]
    response = await world.raw("GET", "/v1/rooms/Lobby?online=yes")
    assert response.code == 400 and (await response.json())["error"] == "bad_request"


# -- a nearly full store -------------------------------------------------------------------------------------------

async def filled(world, used, maximum=1_000_000):
    """The store reports *used* of *maximum* bytes and the API's memory watch has polled it."""
    world.store.used_memory, world.store.max_memory = used, maximum
    await world.api.memory.poll()


@pytest_twisted.ensureDeferred
async def test_above_the_mailbox_share_deposits_wait_and_the_rest_is_served(world):
    """Issue 12, item 7: deposits could fill Redis until claims and heartbeats failed. Above 75% of maxmemory a
    deposit is 507 registry_full with Retry-After; heartbeats, updates, new claims, rooms, fetches and acks go on."""
    alice, bob = await registered(world, "alice", "bob")
    receipt = await alice.deposit("bob", "before")
    await filled(world, 760_000)
    error = await refused(alice.deposit("bob", "hello"), 507, "registry_full")
    assert "nearly full" in error.message and "no mailbox deposits" in error.message
    await alice.heartbeat()
    await alice.register(tcp=["10.0.0.1:1"])
    await registered(world, "carol")
    await alice.create_room("Lobby")
    assert [m["payload"] for m in (await bob.fetch())["messages"]] == ["before"]
    assert (await bob.ack(receipt["id"]))["deleted"] == 1


@pytest_twisted.ensureDeferred
async def test_above_the_claims_share_new_names_and_rooms_wait_too(world):
    """Above 90% new names and new rooms are 507 too; a heartbeat, an update of one's own name and a join are still
    served."""
    alice, bob = await registered(world, "alice", "bob")
    await alice.create_room("Lobby")
    await filled(world, 950_000)
    await refused(world.client("carol").register(), 507, "registry_full")
    await refused(alice.create_room("Other"), 507, "registry_full")
    await alice.heartbeat()
    await alice.register(tcp=["10.0.0.1:1"])
    await bob.join("Lobby")
    dave = world.client("dave")
    response = await signed_put(world, dave, {"key": dave.identity.public_text})
    assert response.code == 507 and response.headers.getRawHeaders("Retry-After") == ["60"]
    assert (await response.json())["retry_after"] == 60


@pytest_twisted.ensureDeferred
async def test_deposits_between_two_polls_count_against_the_share(world):
    """What was let in since the last poll counts: a burst of deposits cannot run far past the share before the
    next poll; the next poll's figure replaces the estimate."""
    alice, _ = await registered(world, "alice", "bob")
    await filled(world, 700_000)
    for _ in range(3):
        await alice.deposit("bob", "x" * 20_000)
    await refused(alice.deposit("bob", "x" * 20_000), 507, "registry_full")
    await filled(world, 700_000)
    await alice.deposit("bob", "x" * 20_000)


@pytest_twisted.ensureDeferred
async def test_without_a_maxmemory_nothing_is_refused(world):
    """A Redis without maxmemory (an external one) refuses nothing for memory, whatever it holds."""
    alice, _ = await registered(world, "alice", "bob")
    await filled(world, 10 << 30, maximum=0)
    await alice.deposit("bob", "hello")
    await registered(world, "carol")


@pytest_twisted.ensureDeferred
async def test_a_redis_that_would_evict_or_has_no_maximum_is_said_once(world):
    """An external Redis without maxmemory, or with a policy that evicts, is logged once (not at every poll)."""
    from twisted.logger import capturedLogs

    with capturedLogs() as events:
        for _ in range(3):
            await world.api.memory.poll()
        world.api.memory.store.memory = lambda: succeed({"used": 0, "max": 1 << 30, "policy": "allkeys-lru"})
        for _ in range(3):
            await world.api.memory.poll()
    said = [e["message"] for e in events if "message" in e]
    assert len(said) == 2 and "no maxmemory" in said[0] and "allkeys-lru" in said[1]


def signed(base, identity, name, method, path, body=None):
    data = b"" if body is None else jsonbody.dumps(body)
    headers = signing.sign_request(identity, name, method, path, data, time.time())
    if body is not None:
        headers["Content-Type"] = "application/json"
    return requests.request(method, base + path, data=data or None, headers=headers, timeout=10)


def test_a_full_embedded_redis_refuses_deposits_but_serves_heartbeats_and_updates(tmp_path):
    """End to end, item 7: a registry whose embedded Redis has 8 MiB (noeviction) is filled with 60 KB deposits.
    They get 507 registry_full (Retry-After) from about 6 MiB on, while a heartbeat, a re-registration and a
    fetch still succeed."""
    import redis

    with RegistryProcess(tmp_path / "registry", stun=False, registry_limits="redis-maxmemory=8M") as registry:
        base = registry.http
        peers = {name: signing.Identity.generate() for name in ("alice", "bob")}
        for name, identity in peers.items():
            assert signed(base, identity, name, "PUT", "/v1/peers/" + name, {"key": identity.public_text}).ok
        server = redis.Redis(unix_socket_path=str(tmp_path / "registry" / "redis.sock"))
        assert server.config_get("maxmemory*")["maxmemory"] == str(8 << 20)
        assert server.config_get("maxmemory*")["maxmemory-policy"] == "noeviction"
        payload = "x" * 60_000
        codes = []
        for _ in range(150):
            reply = signed(base, peers["alice"], "alice", "POST", "/v1/mailbox/bob", {"payload": payload})
            codes.append(reply.status_code)
            if reply.status_code == 507:
                break
        assert codes[-1] == 507 and set(codes[:-1]) == {201}, codes
        assert reply.json()["error"] == "registry_full" and int(reply.headers["Retry-After"]) > 0
        assert "nearly full" in reply.json()["message"]  # the registry's refusal, not Redis' own at its maxmemory
        used = server.info("memory")["used_memory"]
        assert 0.6 * (8 << 20) < used < 0.85 * (8 << 20), used
        assert signed(base, peers["alice"], "alice", "POST", "/v1/peers/alice/heartbeat").status_code == 200
        again = signed(base, peers["bob"], "bob", "PUT", "/v1/peers/bob", {"key": peers["bob"].public_text})
        assert again.status_code == 200, again.text
        fetched = signed(base, peers["bob"], "bob", "GET", "/v1/mailbox/bob?limit=5")
        assert fetched.status_code == 200 and len(json.loads(fetched.content)["messages"]) == 5
