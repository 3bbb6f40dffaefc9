"""The dialer (p2pd.peer.chat.dialer) over fake TLS endpoints: links reused, one attempt per peer at a time,
every address tried, identities checked against the pin, the back-off between attempts."""

import pytest
from zope.interface.verify import verifyObject

from p2pd.errors import IdentityMismatch, LinkFailed, NoSuchPeer, PeerOffline
from p2pd.peer.chat.dialer import RETRY_MAX, RETRY_MIN
from p2pd.peer.interfaces import IDialer
from tests.chat_fakes import ChatWorld, failure, result


@pytest.fixture
def world(tmp_path):
    return ChatWorld(tmp_path)


def test_the_dialer_provides_its_interface(world):
    assert verifyObject(IDialer, world.dialer)


def test_a_dial_connects_pins_the_key_and_the_link_is_reused(world):
    bob = world.peer("bob", 2)
    link = result(world.dialer.dial("bob"))
    assert world.pins.pinned("bob") == bob.public_text
    assert world.dialer.link_to("bob") is link
    assert result(world.dialer.dial("bob")) is link
    assert len(world.tls.attempts) == 1


def test_concurrent_dials_share_one_attempt(world):
    world.peer("bob", 2)
    world.registry.hold = True
    d1, d2 = world.dialer.dial("bob"), world.dialer.dial("bob")
    assert [c[0] for c in world.registry.calls] == ["lookup"]
    world.registry.release()
    assert result(d1) is result(d2)
    assert len(world.tls.attempts) == 1


def test_every_registered_address_is_tried_in_turn(world):
    world.peer("bob", 2, reachable=False)
    world.registry.records["bob"]["tcp"] = ["[::1]:7", "127.0.0.1:8", "127.0.0.1:2"]
    world.tls.reachable.add(("127.0.0.1", 2))
    result(world.dialer.dial("bob"))
    assert world.tls.attempts == [("::1", 7), ("127.0.0.1", 8), ("127.0.0.1", 2)]


def test_failures_name_every_address(world):
    world.peer("bob", 2, reachable=False)
    world.registry.records["bob"]["tcp"] = ["127.0.0.1:7", "127.0.0.1:8"]
    error = failure(world.dialer.dial("bob"))
    assert isinstance(error, LinkFailed)
    assert "127.0.0.1:7: " in error.message and "127.0.0.1:8: " in error.message


def test_no_address_offline_and_unknown(world):
    world.peer("bob", 2)
    world.registry.records["bob"]["tcp"] = []
    assert "no address registered" in failure(world.dialer.dial("bob")).message
    world.peer("carol", 3, online=False)
    assert isinstance(failure(world.dialer.dial("carol")), PeerOffline)
    assert isinstance(failure(world.dialer.dial("nobody")), NoSuchPeer)
    assert world.tls.attempts == []


def test_a_key_other_than_the_pinned_one_is_refused_before_any_connection(world):
    world.peer("bob", 2)
    world.pins.pin("bob", "ANOTHER-KEY")
    assert isinstance(failure(world.dialer.dial("bob")), IdentityMismatch)
    assert world.tls.attempts == []


def test_a_handshake_that_reports_an_identity_mismatch_is_an_identity_mismatch(world):
    world.peer("bob", 2)
    world.tls.handshake_error = LinkFailed("bob presented another key", "identity_mismatch")
    assert isinstance(failure(world.dialer.dial("bob")), IdentityMismatch)
    assert world.pins.pinned("bob") is None


def test_a_handshake_that_never_completes_times_out_and_is_aborted(world):
    world.peer("bob", 2)
    world.tls.handshake_ok = False
    d = world.dialer.dial("bob")
    world.clock.advance(world.dialer.timeout * 2 - 0.1)
    assert not d.called
    world.clock.advance(0.2)
    assert isinstance(failure(d), LinkFailed)
    assert world.tls.connected[0].transport.aborted


def test_the_back_off_doubles_up_to_its_ceiling_and_a_link_clears_it(world):
    assert world.dialer.wait_before_dialling("bob") <= 0
    waits = []
    for _ in range(8):
        world.dialer.failed("bob", LinkFailed("cannot reach bob"))
        waits.append(world.dialer.wait_before_dialling("bob"))
    assert waits[:3] == [RETRY_MIN, RETRY_MIN * 2, RETRY_MIN * 4] and waits[-1] == RETRY_MAX
    assert world.dialer.last_error["bob"] == "cannot reach bob"
    assert world.dialer.offline_seen["bob"] == "unreachable"
    world.link("bob")
    assert world.dialer.wait_before_dialling("bob") <= 0 and "bob" not in world.dialer.last_error


def test_only_the_current_link_going_down_counts(world):
    old, new = world.link("bob"), world.link("bob")
    assert world.dialer.link_to("bob") is new
    assert world.dialer.down(old) is False and world.dialer.link_to("bob") is new
    assert world.dialer.down(new) is True and world.dialer.link_to("bob") is None


def test_the_fake_link_of_these_tests_is_an_ilink():
    from zope.interface.verify import verifyObject

    from p2pd.peer.interfaces import ILink
    from tests.chat_fakes import FakeLink
    assert verifyObject(ILink, FakeLink("bob"))


@pytest.mark.parametrize("host, observed, own, ok", [
    ("203.0.113.7", "203.0.113.7", None, True),  # its public address, as the registry saw it
    ("192.0.2.1", "203.0.113.7", None, False),  # someone else's public address: never
    ("2001:db8::1", "203.0.113.7", None, False),
    ("2001:db8::1", "2001:db8::1", None, True),
    ("10.0.0.5", "203.0.113.7", None, False),  # a LAN address of a peer behind another NAT
    ("10.0.0.5", "203.0.113.7", "203.0.113.7", True),  # ... behind our NAT: it can be on our LAN
    ("10.0.0.5", "192.168.1.9", None, True),  # the registry is on a private network: so may the peer be
    ("127.0.0.3", "127.0.0.2", None, True),  # on the registry's machine
    ("198.51.100.1", "127.0.0.1", None, False),
    ("fe80::1", "203.0.113.7", "198.51.100.1", False),
    ("peer.example", "203.0.113.7", None, True),  # a host name, dialled as published
    ("192.0.2.1", None, None, True),  # a registry that does not say what it saw
])
def test_only_addresses_that_fit_where_the_registry_saw_the_peer_are_dialled(host, observed, own, ok):
    from p2pd.peer.chat.dialer import dialable
    assert dialable(host, observed, own) is ok


def test_a_name_cannot_aim_our_connections_at_another_host(world):
    """Issue 12, finding 8 (reflection): mallory registers from 127.0.0.1 but publishes 192.0.2.1:80 (a host it
    wants hit) before its own address: only its own is dialled, and the refusal says why."""
    world.peer("mallory", 2)
    world.registry.records["mallory"].update(observed="127.0.0.1", tcp=["192.0.2.1:80", "127.0.0.1:2"])
    result(world.dialer.dial("mallory"))
    assert world.tls.attempts == [("127.0.0.1", 2)]
    world.registry.records["mallory"]["tcp"] = ["192.0.2.1:80"]
    world.dialer.links.clear()
    error = failure(world.dialer.dial("mallory"))
    assert "not where the registry saw mallory (127.0.0.1), not dialled" in error.message
    assert world.tls.attempts == [("127.0.0.1", 2)]


def test_connection_attempts_are_paced(world):
    """Dialling 100 peers at once opens dials_per_second of them a second after the first burst, not 100 at once."""
    for i in range(100):
        world.peer("peer%03d" % i, 1000 + i)
    dials = [world.dialer.dial("peer%03d" % i) for i in range(100)]
    rate = world.dialer.pace.rate
    assert len(world.tls.attempts) == int(rate * 2)
    world.clock.advance(1)
    assert len(world.tls.attempts) <= int(rate * 3) + 1
    world.run(10)
    assert len(world.tls.attempts) == 100 and all(d.called for d in dials)
