"""The registry API as a specification, on the Klein resource with StubTreq, an in-memory store and a Clock."""

import pytest
import pytest_twisted
from treq.testing import StubTreq
from twisted.internet.task import Clock

from p2pd import errors
from p2pd.core import signing
from p2pd.peer.registry_client import RegistryClient
from p2pd.registry.api import RegistryAPI
from p2pd.registry.store import MemoryStore

BASE = "http://registry.test"
T0 = 1_700_000_000


class World:
    """An API over a MemoryStore and a Clock, and signed clients that talk to it through StubTreq."""

    def __init__(self, **api_args):
        self.clock = Clock()
        self.clock.advance(T0)
        self.store = MemoryStore()
        self.api = RegistryAPI(self.store, self.clock, **api_args)
        self.http = StubTreq(self.api.resource())

    def client(self, name, identity=None):
        return RegistryClient(BASE, self.clock, self.http, identity or signing.Identity.generate(), name)

    def raw(self, method, path, data=None, headers=None):
        return self.http.request(method, BASE + path, data=data, headers=headers or {})


@pytest.fixture
def world():
    return World(read_rate=0, write_rate=0)


async def fails_with(d, kind, code=None):
    with pytest.raises(kind) as info:
        await d
    if code:
        assert info.value.code == code
    return info.value


@pytest_twisted.ensureDeferred
async def test_health_ok_then_503_when_store_is_down(world):
    """Health is 200 while the store answers and 503 (JSON, Retry-After) while it does not."""
    assert (await world.client("x").health()) == {"status": "ok", "stun": None}
    world.store.available = False
    response = await world.raw("GET", "/v1/health")
    assert response.code == 503
    assert response.headers.getRawHeaders("Retry-After") == ["1"]
    assert (await response.json())["error"] == "store_unavailable"


@pytest_twisted.ensureDeferred
async def test_register_then_lookup(world):
    """A first registration answers 201 with the record; a lookup shows addresses, key and online state."""
    alice = world.client("alice")
    record = await alice.register(tcp=["127.0.0.1:4000"], udp=["127.0.0.1:4001"])
    assert record["online"] is True
    found = await world.client("bob").lookup("alice")
    assert found["tcp"] == ["127.0.0.1:4000"] and found["udp"] == ["127.0.0.1:4001"]
    assert found["key"] == alice.identity.public_text
    assert found["observed"]


@pytest_twisted.ensureDeferred
async def test_first_claim_is_201_update_is_200(world):
    """The claim creates (201); re-registering with the same key updates (200)."""
    alice = world.client("alice")
    response = await signed_put(world, alice, {"key": alice.identity.public_text, "tcp": [], "udp": []})
    assert response.code == 201
    response = await signed_put(world, alice, {"key": alice.identity.public_text, "tcp": ["10.0.0.1:1"], "udp": []})
    assert response.code == 200


async def signed_put(world, client, body, path=None):
    from p2pd.core import jsonbody

    path = path or "/v1/peers/" + client.name
    data = jsonbody.dumps(body)
    headers = signing.sign_request(client.identity, client.name, "PUT", path, data, world.clock.seconds())
    headers["Content-Type"] = "application/json"
    return await world.raw("PUT", path, data, headers)


@pytest_twisted.ensureDeferred
async def test_name_owned_by_another_key_is_409(world):
    """Another key cannot take a name, whatever its case or width; the owner's record is untouched."""
    await world.client("alice").register(tcp=["127.0.0.1:4000"])
    for spelling in ["alice", "Alice", "ＡＬＩＣＥ"]:
        await fails_with(world.client(spelling).register(tcp=["6.6.6.6:1"]), errors.Conflict, "name_taken")
    assert (await world.client("x").lookup("alice"))["tcp"] == ["127.0.0.1:4000"]


@pytest.mark.parametrize("name", ["аlice", "alice\u200b", "al ice", "ab", "a" * 33, "al\x1bce"])
@pytest_twisted.ensureDeferred
async def test_invalid_names_are_400(world, name):
    """Names outside [a-z0-9_-]{3,32} after NFKC+casefold are refused with 400."""
    await fails_with(world.client(name).register(), errors.BadRequest, "invalid_name")


@pytest_twisted.ensureDeferred
async def test_unknown_peer_is_404(world):
    """Looking up a name nobody registered is a 404 with a JSON error."""
    await fails_with(world.client("x").lookup("nobody"), errors.NotFound, "unknown_peer")


@pytest_twisted.ensureDeferred
async def test_lease_expires_without_heartbeat(world):
    """Without heartbeats a peer drops out of the online list at its TTL; its record says offline."""
    alice = world.client("alice")
    await alice.register()
    world.clock.advance(59)
    assert [p["name"] for p in (await alice.peers())["peers"]] == ["alice"]
    world.clock.advance(1)
    assert (await alice.peers())["peers"] == []
    record = await alice.lookup("alice")
    assert record["online"] is False and record["lease_expires"] is None


@pytest_twisted.ensureDeferred
async def test_heartbeat_keeps_presence(world):
    """Heartbeats renew the lease."""
    alice = world.client("alice")
    await alice.register()
    for _ in range(5):
        world.clock.advance(30)
        assert (await alice.heartbeat())["online"] is True
    assert (await alice.lookup("alice"))["online"] is True


@pytest_twisted.ensureDeferred
async def test_heartbeat_for_unknown_name_is_unauthorized(world):
    """A heartbeat for a name that is not registered (e.g. after the registry forgot it) is refused."""
    await fails_with(world.client("ghost").heartbeat(), errors.Unauthorized, "unknown_signer")


@pytest_twisted.ensureDeferred
async def test_going_offline(world):
    """A signed offline request ends presence at once."""
    alice = world.client("alice")
    await alice.register()
    await alice.go_offline()
    assert (await alice.lookup("alice"))["online"] is False


@pytest_twisted.ensureDeferred
async def test_release_frees_the_name(world):
    """Releasing a name lets another key claim it."""
    alice = world.client("alice")
    await alice.register()
    await alice.release()
    await fails_with(alice.lookup("alice"), errors.NotFound)
    assert (await world.client("alice").register())["online"] is True


@pytest_twisted.ensureDeferred
async def test_signature_by_another_key_is_401(world):
    """A heartbeat signed with a key that does not own the name is refused."""
    await world.client("alice").register()
    await fails_with(world.client("alice").heartbeat(), errors.Unauthorized)


@pytest_twisted.ensureDeferred
async def test_acting_for_someone_else_is_403(world):
    """bob cannot send alice's heartbeat, even with a valid signature of his own."""
    await world.client("alice").register()
    bob = world.client("bob")
    await bob.register()
    path = "/v1/peers/alice/heartbeat"
    headers = signing.sign_request(bob.identity, "bob", "POST", path, b"", world.clock.seconds())
    response = await world.raw("POST", path, None, headers)
    assert response.code == 403


@pytest_twisted.ensureDeferred
async def test_replayed_request_is_401(world):
    """The same signed heartbeat sent twice is accepted once; the replay is refused."""
    alice = world.client("alice")
    await alice.register()
    path = "/v1/peers/alice/heartbeat"
    headers = signing.sign_request(alice.identity, "alice", "POST", path, b"", world.clock.seconds())
    assert (await world.raw("POST", path, None, headers)).code == 200
    world.clock.advance(1)
    response = await world.raw("POST", path, None, headers)
    assert response.code == 401 and "replay" in (await response.json())["message"]


@pytest_twisted.ensureDeferred
async def test_stale_timestamp_is_401(world):
    """A signature older than the window is refused even with a fresh nonce."""
    alice = world.client("alice")
    await alice.register()
    path = "/v1/peers/alice/heartbeat"
    headers = signing.sign_request(alice.identity, "alice", "POST", path, b"", world.clock.seconds() - 61)
    assert (await world.raw("POST", path, None, headers)).code == 401


@pytest.mark.parametrize("field", ["name", "timestamp", "nonce", "signature", "body", "path"])
@pytest_twisted.ensureDeferred
async def test_tampered_registration_is_refused(world, field):
    """Flipping any covered field of a signed registration gets 401/403 and changes nothing."""
    from p2pd.core import jsonbody

    alice = world.client("alice")
    path = "/v1/peers/alice"
    data = jsonbody.dumps({"key": alice.identity.public_text, "tcp": ["127.0.0.1:1"], "udp": []})
    headers = signing.sign_request(alice.identity, "alice", "PUT", path, data, world.clock.seconds())
    headers["Content-Type"] = "application/json"
    if field == "name":
        headers[signing.H_NAME] = "alicf"
    elif field == "timestamp":
        headers[signing.H_TIMESTAMP] = str(int(headers[signing.H_TIMESTAMP]) + 1)
    elif field == "nonce":
        headers[signing.H_NONCE] = headers[signing.H_NONCE][:-1] + ("A" if headers[signing.H_NONCE][-1] != "A" else "B")
    elif field == "signature":
        sig = signing.b64d(headers[signing.H_SIGNATURE])
        headers[signing.H_SIGNATURE] = signing.b64e(bytes([sig[0] ^ 1]) + sig[1:])
    elif field == "body":
        data = data.replace(b"127.0.0.1:1", b"127.0.0.1:2")
    elif field == "path":
        path = "/v1/peers/alicf"
    response = await world.raw("PUT", path, data, headers)
    assert response.code in (401, 403)
    assert world.store.peers == {}


@pytest.mark.parametrize("body, ctype, code", [
    (b"not json", "application/json", 400),
    (b"\xff\xfe", "application/json", 400),
    (b'{"key": NaN}', "application/json", 400),
    (b'{"key": "a", "key": "b"}', "application/json", 400),
    (b"[" * 10000 + b"]" * 10000, "application/json", 400),
    (b'{"n": ' + b"9" * 100000 + b"}", "application/json", 400),
    (b"[]", "application/json", 400),
    (b"{}", "text/plain", 415),
])
@pytest_twisted.ensureDeferred
async def test_malformed_bodies_are_4xx(world, body, ctype, code):
    """Malformed JSON of every kind is a clear 4xx, never a 500."""
    response = await world.raw("PUT", "/v1/peers/alice", body, {"Content-Type": ctype})
    assert response.code == code
    assert "message" in (await response.json())


@pytest_twisted.ensureDeferred
async def test_bad_addresses_are_400(world):
    """Reported addresses must be host:port with a valid port; at most 8 of each kind."""
    alice = world.client("alice")
    for tcp in (["nohost"], ["1.2.3.4:0"], ["1.2.3.4:70000"], ["[zz]:1"], ["a b:1"], ["1.2.3.4:1"] * 9, "x", [5]):
        await fails_with(alice.register(tcp=tcp), errors.BadRequest)


@pytest_twisted.ensureDeferred
async def test_store_outage_is_503(world):
    """While the store is down every data endpoint answers 503, not 500."""
    alice = world.client("alice")
    await alice.register()
    world.store.available = False
    await fails_with(alice.lookup("alice"), errors.StoreUnavailable)
    await fails_with(alice.heartbeat(), errors.StoreUnavailable)
    world.store.available = True
    assert (await alice.heartbeat())["online"] is True


@pytest_twisted.ensureDeferred
async def test_rate_limit_answers_429_with_retry_after():
    """Past its quota a client address gets 429 and an integer Retry-After; after waiting it is served."""
    world = World(read_rate=2, write_rate=1)
    client = world.client("x")
    for _ in range(4):
        await fails_with(client.lookup("nobody"), errors.NotFound)
    response = await world.raw("GET", "/v1/peers/nobody")
    assert response.code == 429
    assert int(response.headers.getRawHeaders("Retry-After")[0]) >= 1
    world.clock.advance(1)
    await fails_with(client.lookup("nobody"), errors.NotFound)


@pytest_twisted.ensureDeferred
async def test_general_has_everyone(world):
    """General exists from the start and every registered peer is in it; nobody can leave it."""
    alice, bob = world.client("alice"), world.client("bob")
    await alice.register()
    await bob.register()
    general = await alice.room("General")
    assert general["members"] == ["alice", "bob"]
    await fails_with(alice.leave("general"), errors.Forbidden)


@pytest_twisted.ensureDeferred
async def test_room_commands(world):
    """create/join/leave with the seed's failure cases: exists, does not exist, already/not a member."""
    alice, bob = world.client("alice"), world.client("bob")
    await alice.register()
    await bob.register()
    room = await alice.create_room("G1")
    assert room["name"] == "G1" and room["members"] == ["alice"]
    await fails_with(bob.create_room("g1"), errors.Conflict, "room_exists")
    await fails_with(alice.join("G1"), errors.Conflict, "already_member")
    assert (await bob.join("g1"))["members"] == ["alice", "bob"]
    await fails_with(bob.join("G2"), errors.NotFound, "unknown_room")
    await fails_with(bob.leave("G2"), errors.NotFound, "unknown_room")
    assert (await bob.leave("G1"))["members"] == ["alice"]
    await fails_with(bob.leave("G1"), errors.Conflict, "not_member")
    names = [r["name"] for r in (await bob.rooms())["rooms"]]
    assert names == ["G1", "General"]
    lonely = await bob.create_room("G3", join=False)  # the seed's create: no member until someone joins
    assert lonely["members"] == [] and lonely["creator"] == "bob"
    assert (await bob.join("G3"))["members"] == ["bob"]
    await fails_with(alice.create_room("bad room"), errors.BadRequest, "invalid_name")


@pytest_twisted.ensureDeferred
async def test_mailbox_only_owner_reads(world):
    """Anyone registered may deposit; only the recipient can fetch and acknowledge."""
    alice, bob, carol = world.client("alice"), world.client("bob"), world.client("carol")
    for c in (alice, bob, carol):
        await c.register()
    deposited = await carol.deposit("bob", "sealed for bob")
    await fails_with(alice.request("GET", "/v1/mailbox/bob", signed=True), errors.Forbidden)
    messages = (await bob.fetch())["messages"]
    assert [(m["from"], m["payload"], m["id"]) for m in messages] == [("carol", "sealed for bob", deposited["id"])]
    await bob.ack(deposited["id"])
    assert (await bob.fetch())["messages"] == []
    await fails_with(bob.ack(deposited["id"]), errors.NotFound)


@pytest_twisted.ensureDeferred
async def test_mailbox_gives_back_deposits_in_the_order_they_came_in_the_same_millisecond(world):
    """A sender deposits its queue one message after another, in seq order; many land in the same millisecond,
    and the recipient must get them in that order (ids once sorted by their random part, so it did not)."""
    bob, carol = world.client("bob"), world.client("carol")
    for c in (bob, carol):
        await c.register()
    sent = [(await carol.deposit("bob", "p%02d" % i))["id"] for i in range(40)]
    messages = (await bob.fetch(limit=50))["messages"]
    assert [m["payload"] for m in messages] == ["p%02d" % i for i in range(40)]
    assert [m["id"] for m in messages] == sent


@pytest_twisted.ensureDeferred
async def test_mailbox_messages_are_acknowledged_many_at_once(world):
    """DELETE /v1/mailbox/{name}?ids=A,B,...: up to 200 in one request, by the owner only; ids already gone count
    0, malformed lists are 400."""
    bob, carol = world.client("bob"), world.client("carol")
    for c in (bob, carol):
        await c.register()
    ids = [(await carol.deposit("bob", "p%d" % i))["id"] for i in range(5)]
    assert await bob.ack_many(ids[:3] + ["0" * 25]) == {"deleted": 3}
    assert [m["id"] for m in (await bob.fetch())["messages"]] == ids[3:]
    await fails_with(carol.request("DELETE", "/v1/mailbox/bob", signed=True, query={"ids": ids[3]}),
                     errors.Forbidden)
    for bad in ("", "NOT-HEX", ",".join(["a"] * 201)):
        await fails_with(bob.request("DELETE", "/v1/mailbox/bob", signed=True, query={"ids": bad}),
                         errors.BadRequest)


@pytest_twisted.ensureDeferred
async def test_mailbox_limits(world):
    """Deposits need a registered sender and recipient and a payload of at most 64 KiB."""
    alice = world.client("alice")
    await alice.register()
    await fails_with(alice.deposit("nobody", "x"), errors.NotFound)
    await fails_with(alice.deposit("alice", "x" * (64 * 1024 + 1)), errors.BadRequest)
    await fails_with(world.client("stranger").deposit("alice", "x"), errors.Unauthorized)


@pytest_twisted.ensureDeferred
async def test_unknown_route_and_method(world):
    """Unknown endpoints are a JSON 404; a wrong method is a JSON 405."""
    response = await world.raw("GET", "/v1/nothing")
    assert response.code == 404 and (await response.json())["error"] == "not_found"
    response = await world.raw("PATCH", "/v1/peers/alice")
    assert response.code == 405 and (await response.json())["error"] == "method_not_allowed"


@pytest_twisted.ensureDeferred
async def test_openapi_is_served(world):
    """The OpenAPI document is served as JSON."""
    doc = await (await world.raw("GET", "/v1/openapi.json")).json()
    assert doc["openapi"].startswith("3.")
