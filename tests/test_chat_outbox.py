"""The outbox (p2pd.peer.chat.outbox) over fakes: stored and committed before anything is sent, in request
order, answered delivered or queued, into the mailbox when the peer is away, sent again after a link drops."""

import pytest

from p2pd.core import wire
from p2pd.errors import BadRequest, NoSuchPeer, P2PDError
from p2pd.peer.chat.outbox import check_text
from tests.chat_fakes import ChatWorld, failure, result


@pytest.fixture
def world(tmp_path):
    return ChatWorld(tmp_path)


def sent_bodies(link):
    return [f["body"] for f in link.sent if f["t"] == "msg"]


def test_a_message_is_committed_before_it_is_sent_and_answered_delivered_after_the_ack(world):
    world.peer("bob", 2)
    d = world.outbox.send_message("bob", "hello", 10.0)
    assert world.tls.connected == []  # nothing leaves before the commit that ends the turn
    world.run()
    (link,) = world.tls.connected
    (frame,) = link.sent
    assert frame["t"] == "msg" and frame["body"] == "hello" and frame["from"] == "alice" and frame["seq"] == 1
    assert world.storage.get_message(frame["id"])["status"] == "pending" and not world.storage.pending
    assert not d.called
    world.outbox.acked(link, frame["id"])
    assert not d.called  # the delivered answer waits for the commit of "delivered"
    world.run()
    assert result(d) == {"status": "delivered", "via": "direct", "id": frame["id"], "to": "bob"}
    assert world.storage.get_message(frame["id"])["status"] == "delivered"
    assert world.outbox.count() == 0
    assert [e["event"] for e in world.seen] == ["message", "delivered"]


def test_unacknowledged_messages_are_answered_queued_after_wait_seconds_by_one_timer(world):
    world.peer("bob", 2)
    ds = [world.outbox.send_message("bob", "m%d" % i, 5.0) for i in range(50)]
    world.run()
    deadline_calls = [c for c in world.clock.getDelayedCalls() if c.func == world.outbox.deadlines._sweep]
    assert len(deadline_calls) == 1
    world.run(4.9)
    assert not any(d.called for d in ds)
    world.run(0.2)
    outcomes = [result(d) for d in ds]
    assert {(o["status"], o["via"], o["reason"]) for o in outcomes} == {("queued", "outbox", "not acknowledged yet")}
    assert world.outbox.count("bob") == 50  # still queued: delivered when bob acknowledges


def test_messages_are_stored_in_request_order_while_the_registry_confirms_the_name(world):
    world.peer("bob", 2)
    world.registry.hold = True
    ds = [world.outbox.send_message("bob", text, 10.0) for text in ("one", "two", "three")]
    assert world.storage.outbox() == []
    world.registry.release()  # the one lookup for bob: then all three are stored, in order
    world.registry.hold = False
    world.run()
    assert [m["body"] for m in world.storage.outbox()] == ["one", "two", "three"]
    assert [m["seq"] for m in world.storage.outbox()] == [1, 2, 3]
    assert [c[0] for c in world.registry.calls].count("lookup") >= 1
    assert not any(d.called for d in ds)


def test_an_unknown_name_fails_every_waiting_send_and_stores_nothing(world):
    ds = [world.outbox.send_message("nobody", "hi", 10.0) for _ in range(3)]
    world.run()
    assert all(isinstance(failure(d), NoSuchPeer) for d in ds)
    assert world.storage.outbox() == []


@pytest.mark.parametrize("to, text, words", [("bob", "", "empty"), ("bob", "x" * (wire.MAX_BODY + 1), "limit"),
                                             ("alice", "hi", "yourself"), ("not a name!", "hi", "")])
def test_bad_sends_fail_at_once(world, to, text, words):
    world.peer("bob", 2)
    error = failure(world.outbox.send_message(to, text, 10.0))
    assert isinstance(error, P2PDError) and words in error.message
    assert world.storage.outbox() == []


def test_check_text_refuses_lone_surrogates():
    with pytest.raises(BadRequest, match="Unicode"):
        check_text("\ud800")


def test_an_offline_peer_gets_its_messages_sealed_into_the_mailbox_in_order(world):
    world.peer("bob", 2, online=False)
    ds = [world.outbox.send_message("bob", text, 10.0) for text in ("one", "two")]
    world.run()
    assert world.tls.attempts == []  # offline: not dialled
    assert [r for r, _ in world.registry.deposits] == ["bob", "bob"]
    outcomes = [result(d) for d in ds]
    assert [o["via"] for o in outcomes] == ["mailbox", "mailbox"] and "offline" in outcomes[0]["reason"]
    assert world.outbox.count() == 0
    assert [m["status"] for m in world.storage.history("bob")] == ["queued", "queued"]
    assert [e["event"] for e in world.kinds("queued")] == ["queued", "queued"]


def test_an_unreachable_peer_goes_to_the_mailbox_and_is_dialled_again_after_the_back_off(world):
    world.peer("bob", 2, reachable=False)
    d = world.outbox.send_message("bob", "one", 10.0)
    world.run()
    assert result(d)["via"] == "mailbox" and len(world.tls.attempts) == 1
    world.tls.reachable.add(("127.0.0.1", 2))
    d2 = world.outbox.send_message("bob", "two", 10.0)
    world.run()
    assert result(d2)["via"] == "mailbox"  # within the back-off: straight to the mailbox, no dial
    assert len(world.tls.attempts) == 1
    world.run(2.1)
    world.outbox.send_message("bob", "three", 10.0)
    world.run()
    assert len(world.tls.attempts) == 2
    (link,) = world.tls.connected
    assert sent_bodies(link) == ["three"]


def test_a_link_that_drops_with_messages_in_flight_sends_them_again_on_a_new_link(world):
    world.peer("bob", 2)
    world.outbox.send_message("bob", "one", 10.0)
    world.run()
    (first,) = world.tls.connected
    world.drop(first)
    world.run(0.3)
    assert len(world.tls.connected) == 2
    assert sent_bodies(world.tls.connected[1]) == ["one"]


def test_a_link_that_comes_up_carries_the_queue_once(world):
    world.peer("bob", 2, reachable=False)
    world.registry.fail_with["deposit"] = OSError("registry down")
    world.outbox.send_message("bob", "one", 10.0)
    world.outbox.send_message("bob", "two", 10.0)
    world.run()
    link = world.link("bob")
    world.outbox.send_queued(link)
    assert sent_bodies(link) == ["one", "two"]


def test_a_message_the_peer_refuses_fails(world):
    world.peer("bob", 2)
    d = world.outbox.send_message("bob", "one", 10.0)
    world.run()
    (link,) = world.tls.connected
    msg_id = link.sent[0]["id"]
    assert world.outbox.refused(link, msg_id, "too big") is True
    assert "refused it: too big" in failure(d).message
    assert world.storage.get_message(msg_id)["status"] == "failed"
    assert world.outbox.refused(link, msg_id, "again") is False
    assert world.kinds("failed")[0]["id"] == msg_id


def test_an_outbox_left_by_the_last_run_is_loaded_and_sent(world, tmp_path):
    world.peer("bob", 2, reachable=False)
    world.registry.fail_with["deposit"] = OSError("registry down")
    world.outbox.send_message("bob", "kept", 10.0)
    world.run()
    world.storage.commit()
    again = ChatWorld(tmp_path, "alice")
    assert again.outbox.count("bob") == 1
    again.peer("bob", 2)
    again.outbox.pump_all()
    again.run()
    assert sent_bodies(again.tls.connected[0]) == ["kept"]


def test_the_outbox_and_its_neighbours_provide_their_interfaces(world):
    from zope.interface.verify import verifyObject

    from p2pd.peer.interfaces import ICommits, IEvents, IOutbox
    assert verifyObject(IOutbox, world.outbox)
    assert verifyObject(IEvents, world.events) and verifyObject(ICommits, world.commits)
