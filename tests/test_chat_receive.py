"""The receiving side (p2pd.peer.chat.receive) over fakes: stored once, acknowledged only after the commit,
per-sender order across the mailbox, room messages only from members."""

import hashlib
import json

import pytest

from p2pd.core.sealed import seal
from tests.chat_fakes import ChatWorld, FakeLink, result


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


def deposit(world, sender_keys, frame, item_id, sender=None):
    """Put *frame*, sealed by *sender_keys* as *sender* (the frame's sender by default), in alice's mailbox."""
    sender = sender or frame["from"]
    payload = json.dumps(frame, separators=(",", ":")).encode()
    token = seal(sender_keys.signing, sender, "alice", world.identity.box_public_text, payload)
    world.registry.mailbox.append({"id": item_id, "from": sender, "payload": token})


def test_a_forged_mailbox_message_is_quarantined_and_acknowledged(world):
    deposit(world, world.keys("mallory"), msg(1), "mb1")  # claims to be bob, signed by another key
    world.receiver.mailbox.fetch()
    world.run()
    assert world.storage.history() == [] and world.registry.acked == ["mb1"]
    (kept,) = world.storage.quarantined()
    assert kept["id"] == "mb1" and kept["from"] == "bob" and "not signed by" in kept["reason"]
    assert world.kinds("quarantined") == [{"event": "quarantined", "id": "mb1", "from": "bob",
                                           "reason": kept["reason"]}]


def test_an_item_signed_by_a_key_other_than_the_pin_does_not_hold_up_the_rest(world):
    """Issue 12, finding 1: bob reinstalled (new key) and deposited; the registry has his new key, alice's pin the
    old one. His item is quarantined and acknowledged; the 20 messages carol deposited after it are delivered in
    the same fetch."""
    world.pins.pin("bob", world.bob.public_text)
    new_bob = world.keys("bob-reinstalled")
    world.registry.records["bob"]["key"] = new_bob.public_text
    carol = world.peer("carol", 3)
    deposit(world, new_bob, msg(1), "mb00", sender="bob")
    for i in range(1, 21):
        deposit(world, carol, msg(i, sender="carol"), "mb%02d" % i)
    world.receiver.mailbox.page = 8  # several pages
    world.receiver.mailbox.fetch()
    world.run()
    assert bodies(world, "carol") == ["m%d" % i for i in range(1, 21)]
    assert world.registry.mailbox == [] and sorted(world.registry.acked)[0] == "mb00"
    (kept,) = world.storage.quarantined()
    assert kept["from"] == "bob" and "pinned" in kept["reason"]


def test_an_item_whose_sender_cannot_be_looked_up_now_is_left_and_the_fetch_goes_on(world):
    dave = world.peer("dave", 4)
    carol = world.peer("carol", 3)
    deposit(world, dave, msg(1, sender="dave"), "mb1")
    deposit(world, carol, msg(1, sender="carol"), "mb2")
    world.registry.lookup_fails["dave"] = OSError("registry overloaded")
    world.receiver.mailbox.fetch()
    world.run()
    assert bodies(world, "carol") == ["m1"] and bodies(world, "dave") == []
    assert [m["id"] for m in world.registry.mailbox] == ["mb1"] and world.storage.quarantined() == []
    del world.registry.lookup_fails["dave"]
    world.receiver.mailbox.fetch()
    world.run()
    assert bodies(world, "dave") == ["m1"] and world.registry.mailbox == []


def test_a_rate_limited_fetch_waits_as_long_as_retry_after_says_and_goes_on(world):
    from p2pd.errors import TooManyRequests
    carol = world.peer("carol", 3)
    for i in range(1, 4):
        deposit(world, carol, msg(i, sender="carol"), "mb%d" % i)
    world.registry.fail_once["fetch"] = [TooManyRequests("slow down", retry_after=5)]
    world.registry.fail_once["ack_many"] = [TooManyRequests("slow down", retry_after=2)]
    d = world.receiver.mailbox.fetch()
    world.run(4.9)
    assert bodies(world, "carol") == [] and not d.called
    world.run(0.2)
    world.run(2.1)
    assert bodies(world, "carol") == ["m1", "m2", "m3"] and world.registry.mailbox == [] and d.called


def test_malformed_mailbox_items_are_quarantined_or_skipped_without_stopping_the_fetch(world):
    carol = world.peer("carol", 3)
    world.registry.mailbox = [{"id": "mb1", "from": "bob", "payload": 7}, {"id": "mb2", "payload": "not sealed"},
                              {"from": "bob", "payload": "no id"}, "not even a dict"]
    deposit(world, carol, msg(1, sender="carol"), "mb3")
    world.receiver.mailbox.fetch()
    world.run()
    assert bodies(world, "carol") == ["m1"]
    assert sorted(q["id"] for q in world.storage.quarantined()) == ["mb1", "mb2"]
    assert sorted(world.registry.acked) == ["mb1", "mb2", "mb3"]


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


def test_a_stream_of_seq_gaps_fetches_the_mailbox_once_per_period(world):
    """Issue 12, finding 9: each frame that skips a seq made the receiver fetch its mailbox (a signed registry
    request): a paced stream of them had the victim rate-limit itself. Now one sender's gaps fetch at most once
    every GAP_FETCH_EVERY seconds; its frames wait for that fetch and are all stored, in order."""
    from p2pd.peer.chat.receive import GAP_FETCH_EVERY
    link = FakeLink("bob")
    for i in range(100):  # 10 per second for 10 s, every one skipping a seq
        world.receiver.receive(link, msg(2 * i + 2))
        world.run(0.1)
    world.run(GAP_FETCH_EVERY)
    fetches = [c for c in world.registry.calls if c[0] == "fetch"]
    assert len(fetches) <= 10 / GAP_FETCH_EVERY + 2
    assert bodies(world) == ["m%d" % (2 * i + 2) for i in range(100)]
    assert link.backlog is None


def test_messages_for_rooms_we_are_not_in_are_not_stored_even_when_the_sender_is(world):
    """Issue 12, finding 11: mallory makes rooms of her own (she is their only member) and posts into them to
    us: 50 spam rooms became 50 conversations. A room message needs us in the member list too."""
    mallory = world.peer("mallory", 5)
    link = FakeLink("mallory")
    for i in range(50):
        world.registry.room_views["Spam%d" % i] = {"name": "Spam%d" % i, "members": ["mallory"]}
        world.receiver.receive(link, msg(i + 1, sender="mallory", room="Spam%d" % i))
        world.run()
    assert world.storage.conversations() == [] and len(link.sent) == 50  # each acknowledged, none kept
    assert all(f["t"] == "ack" for f in link.sent)
    del mallory


def test_a_room_we_just_joined_takes_messages_at_once(world):
    """The member list cached while we were not in the room is dropped when we join it."""
    world.registry.room_views["G2"] = {"name": "G2", "members": ["bob"]}
    link = FakeLink("bob")
    world.receiver.receive(link, msg(1, room="G2"))  # before we joined: dropped
    world.run()
    result(world.rooms.join_room("G2"))
    world.receiver.receive(link, msg(2, room="G2"))
    world.run()
    assert bodies(world, "#g2") == ["m2"]


def test_a_peer_over_its_storage_quota_is_refused_and_told(tmp_path):
    """Issue 12, finding 5: one peer's messages grew the victim's database by 918 MB in 10 s. What one peer may
    keep here is bounded; past it its messages are refused with over_quota (they fail on its side, with the
    reason), duplicates of stored ones are still acknowledged, and other peers are not affected."""
    from p2pd.peer.limits import Limits
    world = ChatWorld(tmp_path, limits=Limits(stored_per_peer=100))
    world.peer("bob", 2)
    carol = world.peer("carol", 3)
    link = FakeLink("bob")
    for i in range(1, 11):
        world.receiver.receive(link, msg(i, body="x" * 30))
        world.run()
    world.run(30)  # the refused ones leave gaps in seq: what follows waits for a (coalesced) mailbox fetch
    assert bodies(world) == ["x" * 30] * 4  # 120 bytes: the fourth took it over the limit
    refusals = [f for f in link.sent if f["t"] == "error"]
    assert len(refusals) == 6 and refusals[0]["code"] == "over_quota" and refusals[0]["ref"] == msg(5)["id"]
    world.receiver.receive(link, msg(2, body="x" * 30))  # a copy of a stored one: acknowledged again
    world.run()
    assert link.sent[-1] == {"t": "ack", "id": msg(2)["id"]}
    deposit(world, world.keys("bob"), msg(11, body="y"), "mb1")
    deposit(world, carol, msg(1, sender="carol", body="fine"), "mb2")
    world.receiver.mailbox.fetch()
    world.run()
    assert bodies(world, "carol") == ["fine"] and world.registry.mailbox == []
    assert [q["id"] for q in world.storage.quarantined()] == ["mb1"]


def test_a_fetched_page_is_acknowledged_in_one_request_or_one_by_one_by_an_older_registry(world):
    """Issue 12, finding 7: the victim drained about 40 deposits per 30 s because each cost one DELETE (and a
    429 ended the fetch). A page is acknowledged in one request; a registry without that route gets one each."""
    from p2pd.errors import MethodNotAllowed
    carol = world.peer("carol", 3)
    for i in range(1, 31):
        deposit(world, carol, msg(i, sender="carol"), "mb%02d" % i)
    world.receiver.mailbox.fetch()
    world.run()
    assert bodies(world, "carol") == ["m%d" % i for i in range(1, 31)] and world.registry.mailbox == []
    assert [c[0] for c in world.registry.calls].count("ack_many") == 1
    assert [c[0] for c in world.registry.calls].count("ack") == 0
    world.registry.fail_with["ack_many"] = MethodNotAllowed("no such route")
    for i in range(31, 34):
        deposit(world, carol, msg(i, sender="carol"), "mb%02d" % i)
    world.receiver.mailbox.fetch()
    world.run()
    assert world.registry.mailbox == [] and [c[0] for c in world.registry.calls].count("ack") == 3
