"""Pins (p2pd.peer.chat.pins): trust on first use, and incoming links checked against the pin first, then the
registry at most once per name every few seconds (issue 12, finding 10)."""

import pytest

from p2pd.errors import IdentityMismatch, NoSuchPeer
from p2pd.peer.chat.pins import VERIFY_CACHE_TTL
from tests.chat_fakes import ChatWorld, failure, result


@pytest.fixture
def world(tmp_path):
    w = ChatWorld(tmp_path)
    w.bob = w.peer("bob", 2)
    return w


def lookups(world):
    return [c for c in world.registry.calls if c[0] == "lookup"]


def test_a_pinned_name_is_checked_against_the_pin_without_asking_the_registry(world):
    world.pins.pin("bob", world.bob.public_text)
    assert result(world.pins.verify_peer("bob", world.bob.public_text))["key"] == world.bob.public_text
    assert isinstance(failure(world.pins.verify_peer("bob", "ANOTHER-KEY")), IdentityMismatch)
    assert lookups(world) == []


def test_the_first_contact_asks_the_registry_and_pins(world):
    assert result(world.pins.verify_peer("bob", world.bob.public_text))
    assert world.pins.pinned("bob") == world.bob.public_text and len(lookups(world)) == 1
    assert isinstance(failure(world.pins.verify_peer("carol", "KEY")), NoSuchPeer)


def test_hellos_claiming_one_name_cost_one_lookup_per_period(world):
    for _ in range(100):
        assert isinstance(failure(world.pins.verify_peer("ghost", "KEY")), NoSuchPeer)
        assert isinstance(failure(world.pins.verify_peer("bob", "NOT-BOBS-KEY")), IdentityMismatch)
    assert len(lookups(world)) == 2 and world.pins.pinned("bob") is None
    world.clock.advance(VERIFY_CACHE_TTL)
    failure(world.pins.verify_peer("ghost", "KEY"))
    assert len(lookups(world)) == 3


def test_a_registry_that_cannot_answer_is_not_cached(world):
    world.registry.lookup_fails["bob"] = OSError("registry down")
    failure(world.pins.verify_peer("bob", world.bob.public_text))
    del world.registry.lookup_fails["bob"]
    assert result(world.pins.verify_peer("bob", world.bob.public_text))


def test_a_blocked_peer_is_refused_everywhere_and_unblocking_lets_it_through(world):
    """Issue 12, finding 5: p2pctl block NAME. Its links, messages, offers (they come over links) and deposits
    are refused; we do not write to it and our room posts skip it."""
    import json

    from p2pd.core.sealed import seal
    from p2pd.errors import Blocked
    world.peer("carol", 3)
    world.pins.block("bob")
    assert world.pins.blocked_names() == ["bob"]
    assert isinstance(failure(world.pins.verify_peer("bob", world.bob.public_text)), Blocked)
    assert isinstance(failure(world.dialer.dial("bob")), Blocked) and world.tls.attempts == []
    assert isinstance(failure(world.outbox.send_message("bob", "hi", 10.0)), Blocked)
    frame = {"t": "msg", "id": "9" * 32, "from": "bob", "seq": 1, "ts": 1, "body": "let me in"}
    token = seal(world.bob.signing, "bob", "alice", world.identity.box_public_text,
                 json.dumps(frame).encode())
    world.registry.mailbox = [{"id": "mb1", "from": "bob", "payload": token}]
    world.receiver.mailbox.fetch()
    world.run()
    assert world.storage.history() == [] and world.registry.acked == ["mb1"] and world.storage.quarantined() == []
    world.registry.room_views["G1"] = {"name": "G1", "members": ["alice", "bob", "carol"]}
    d = world.rooms.post_room("G1", "hello room")
    world.run()
    assert result(d)["recipients"] == ["carol"]
    assert world.pins.unblock("bob") is True and world.pins.unblock("bob") is False
    assert result(world.pins.verify_peer("bob", world.bob.public_text))
    assert world.pins.blocked_names() == []
