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
