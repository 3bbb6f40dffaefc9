"""The receiving side (p2pd.peer.chat.receive) over fakes: stored once, acknowledged only after the commit,
per-sender order across the mailbox, room messages only from members."""

import hashlib
import json

import pytest

from p2pd.core.sealed import seal
from tests.chat_fakes import ChatWorld, FakeLink


@pytest.fixture
def world(tmp_path):
    w = ChatWorld(tmp_path)
    w.bob = w.peer("bob", 2)
    return w


def msg(seq, body=None, sender="bob", room=None):
    frame = {"t": "msg", "id": hashlib.md5(("%s%d" % (sender, seq)).encode()).hexdigest(), "from": sender, "seq": seq,
             "ts": 1000 + seq, "body": body or "m%d" % seq}
    if room:
        frame["room"] = room
    return frame


def bodies(world, conversation="bob"):
    return [m["body"] for m in world.storage.history(conversation) if m["direction"] == "in"]


def test_a_message_is_acknowledged_only_after_its_commit_and_stored_once(world):
    link = FakeLink("bob")
    world.receiver.receive(link, msg(1))
    assert link.sent == [] and world.storage.pending
    world.run()
    assert not world.storage.pending and link.sent == [{"t": "ack", "id": msg(1)["id"]}]
    assert world.kinds("message")[0]["message"]["body"] == "m1"
    world.receiver.receive(link, msg(1))  # a duplicate (our ack was lost): acknowledged again, not stored again
    world.run()
    assert bodies(world) == ["m1"] and len(link.sent) == 2 and len(world.kinds("message")) == 1


def test_a_message_claiming_another_sender_is_refused(world):
    link = FakeLink("bob")
    world.receiver.receive(link, msg(1, sender="carol"))
    world.run()
    assert link.sent[0]["t"] == "error" and link.sent[0]["code"] == "bad_frame"
    assert world.storage.history() == []


def test_a_gap_in_seq_waits_for_the_mailbox_and_order_is_kept(world):
    """seq 2 arrives directly while seq 1 waits in our mailbox: the mailbox is fetched first, then 2 and 3."""
    payload = json.dumps(msg(1), separators=(",", ":")).encode()
    token = seal(world.bob.signing, "bob", "alice", world.identity.box_public_text, payload)
    world.registry.mailbox = [{"id": "mb1", "from": "bob", "payload": token}]
    world.registry.hold = True
    link = FakeLink("bob")
    world.receiver.receive(link, msg(2))
    world.receiver.receive(link, msg(3))  # behind 2, on the same link
    assert world.storage.history() == [] and link.backlog is not None
    while world.registry.held:
        world.registry.release()
        world.run()
    world.registry.hold = False
    world.run()
    assert bodies(world) == ["m1", "m2", "m3"]
    assert world.registry.acked == ["mb1"] and link.backlog is None
    assert [m["via"] for m in world.storage.history("bob")] == ["mailbox", "direct", "direct"]


def test_a_forged_mailbox_message_is_dropped_and_acknowledged(world):
    mallory = world.keys("mallory")
    payload = json.dumps(msg(1), separators=(",", ":")).encode()
    token = seal(mallory.signing, "bob", "alice", world.identity.box_public_text, payload)  # not bob's key
    world.registry.mailbox = [{"id": "mb1", "from": "bob", "payload": token}]
    world.receiver.mailbox.fetch()
    world.run()
    assert world.storage.history() == [] and world.registry.acked == ["mb1"]


def test_room_messages_from_members_only_and_none_for_rooms_we_left(world):
    world.registry.room_views["G1"] = {"name": "G1", "members": ["alice", "bob"]}
    link = FakeLink("bob")
    world.receiver.receive(link, msg(1, room="G1"))
    world.run()
    assert bodies(world, "#g1") == ["m1"]
    world.registry.room_views["G1"]["members"] = ["alice"]
    world.rooms.members.lists.clear()
    world.receiver.receive(link, msg(2, room="G1"))  # bob left the room: dropped, but taken off his outbox
    world.run()
    assert bodies(world, "#g1") == ["m1"] and link.sent[-1] == {"t": "ack", "id": msg(2)["id"]}
    world.rooms.member["g2"] = False
    world.receiver.receive(link, msg(3, room="G2"))
    world.run()
    assert world.storage.history("#g2") == [] and link.sent[-1] == {"t": "ack", "id": msg(3)["id"]}
