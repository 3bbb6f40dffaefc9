"""The peer daemon's store, its messages (p2pd.peer.storage.messages, .outbox): history, outbox, sequence numbers,
text, speed, a model check; and the public API of the composed Storage."""

import inspect
import os
import shutil
import tempfile
import time

import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule
from zope.interface.verify import verifyObject

from p2pd.peer.interfaces import IChatStore, IFileStore
from p2pd.peer.storage import InvalidMessage, Storage, db_path

NOW = 1_700_000_000_000


@pytest.fixture
def path(tmp_path):
    return db_path(str(tmp_path))


@pytest.fixture
def store(path):
    s = Storage(path, name="alice")
    yield s
    s.close()


def incoming(n=1, sender="bob", room=None, body=None, msg_id=None, **extra):
    msg = {"id": msg_id or os.urandom(16).hex(), "sender": sender, "seq": n, "ts": NOW + n,
           "body": "message %d" % n if body is None else body}
    if room is not None:
        msg["room"] = room
    msg.update(extra)
    return msg


# --- sequence numbers -------------------------------------------------------------------------------------


def test_seq_counts_per_recipient(store):
    """Outgoing seq numbers start at 1 and count up separately for each recipient."""
    seqs = [(r, store.add_outgoing(r, "x", NOW)["seq"]) for r in ["bob", "bob", "carol", "bob", "carol"]]
    assert seqs == [("bob", 1), ("bob", 2), ("carol", 1), ("bob", 3), ("carol", 2)]


def test_seq_survives_reopen(path):
    """The per-recipient counter is persistent: after a restart numbering continues where it stopped."""
    s = Storage(path)
    for _ in range(3):
        s.add_outgoing("bob", "x", NOW)
    s.commit()
    s.close()
    s = Storage(path)
    assert s.add_outgoing("bob", "x", NOW)["seq"] == 4
    assert s.add_outgoing("carol", "x", NOW)["seq"] == 1
    s.close()


def test_add_outgoing_returns_the_stored_message(store):
    """add_outgoing returns the full message as history will show it: fresh 32-hex id, pending, outgoing."""
    msg = store.add_outgoing("bob", "hello", NOW)
    assert len(msg["id"]) == 32 and int(msg["id"], 16) >= 0
    assert {k: msg[k] for k in ("conversation", "sender", "recipient", "room", "seq", "ts", "body", "direction",
                                "status", "via", "received_at")} == {
        "conversation": "bob", "sender": "alice", "recipient": "bob", "room": None, "seq": 1, "ts": NOW,
        "body": "hello", "direction": "out", "status": "pending", "via": None, "received_at": NOW}
    assert store.history("bob") == [msg]
    assert store.get_message(msg["id"]) == msg


def test_room_message_conversation_is_canonical_room(store):
    """A room message belongs to conversation "#" + canonical room name, keeping the display name."""
    msg = store.add_outgoing("bob", "hi all", NOW, room="General")
    assert (msg["conversation"], msg["room"]) == ("#general", "General")
    assert store.add_outgoing("bob", "x", NOW, conversation="custom")["conversation"] == "custom"


# --- outbox -------------------------------------------------------------------------------------------------


def test_outbox_order(store):
    """The outbox lists undelivered messages per recipient in seq order; all of them by recipient, then seq."""
    for r in ["carol", "bob", "carol", "bob", "bob"]:
        store.add_outgoing(r, "to " + r, NOW)
    assert [m["seq"] for m in store.outbox("bob")] == [1, 2, 3]
    assert [(m["recipient"], m["seq"]) for m in store.outbox()] == [
        ("bob", 1), ("bob", 2), ("bob", 3), ("carol", 1), ("carol", 2)]
    assert [m["seq"] for m in store.outbox("bob", limit=2)] == [1, 2]
    assert store.outbox_recipients() == ["bob", "carol"]
    assert store.outbox_count() == 5


def test_delivered_leaves_outbox(store):
    """A delivered message leaves the outbox and shows as delivered, with how, in history."""
    a, b = store.add_outgoing("bob", "a", NOW), store.add_outgoing("bob", "b", NOW)
    assert store.mark_delivered(a["id"], "direct", NOW + 5) is True
    assert [m["id"] for m in store.outbox()] == [b["id"]]
    assert store.outbox_count() == 1
    delivered = store.get_message(a["id"])
    assert (delivered["status"], delivered["via"], delivered["updated_at"]) == ("delivered", "direct", NOW + 5)


def test_deposited_leaves_outbox(store):
    """A message handed to the registry mailbox is queued via mailbox, keeps the mailbox id, leaves the outbox."""
    a = store.add_outgoing("bob", "a", NOW)
    assert store.mark_deposited(a["id"], "mbx-17", NOW + 1) is True
    assert store.outbox() == [] and store.outbox_count() == 0 and store.outbox_recipients() == []
    queued = store.get_message(a["id"])
    assert (queued["status"], queued["via"], queued["mailbox_id"]) == ("queued", "mailbox", "mbx-17")
    assert store.mark_deposited(a["id"], "mbx-18", NOW + 2) is False


def test_queued_then_acknowledged_is_delivered(store):
    """When the recipient acknowledges a message it fetched from its mailbox, it becomes delivered."""
    a = store.add_outgoing("bob", "a", NOW)
    store.mark_deposited(a["id"], "mbx-1", NOW + 1)
    assert store.mark_delivered(a["id"], "mailbox", NOW + 2) is True
    done = store.get_message(a["id"])
    assert (done["status"], done["via"], done["mailbox_id"]) == ("delivered", "mailbox", "mbx-1")


def test_only_its_recipient_settles_a_message_and_a_mailbox_one_stays_via_mailbox(store):
    """A receipt names who sends it: carol's receipt for alice's message to bob changes nothing; bob's receipt,
    even one that came over a link, leaves a message that went into his mailbox ``via`` "mailbox"."""
    a = store.add_outgoing("bob", "a", NOW)
    store.mark_deposited(a["id"], "mbx-1", NOW + 1)
    assert store.mark_delivered(a["id"], "direct", NOW + 2, recipient="carol") is False
    assert store.get_message(a["id"])["status"] == "queued" and store.in_mailbox_count() == 1
    assert store.mark_delivered(a["id"], "direct", NOW + 3, recipient="bob") is True
    done = store.get_message(a["id"])
    assert (done["status"], done["via"]) == ("delivered", "mailbox") and store.in_mailbox_count() == 0


def test_receipts_owed_are_kept_once_each_until_sent(store):
    store.owe_receipt("bob", "1" * 32)
    store.owe_receipt("bob", "1" * 32)
    store.owe_receipt("bob", "2" * 32)
    store.owe_receipt("carol", "3" * 32)
    store.commit()
    assert sorted(store.owed_receipts("bob")) == ["1" * 32, "2" * 32] and store.receipt_senders() == ["bob", "carol"]
    assert store.owed_receipts("bob", limit=1) in (["1" * 32], ["2" * 32])
    store.receipts_sent("bob", ["1" * 32, "2" * 32])
    assert store.owed_receipts("bob") == [] and store.receipt_senders() == ["carol"]


def test_deposits_without_a_receipt_expire_once_and_a_late_receipt_still_counts(store):
    old, new = store.add_outgoing("bob", "old", NOW), store.add_outgoing("bob", "new", NOW)
    store.mark_deposited(old["id"], "mbx-1", NOW)
    store.mark_deposited(new["id"], "mbx-2", NOW + 5000)
    assert store.expire_deposits(NOW + 1000, "expired unread", NOW + 9000) == [(old["id"], "bob")]
    assert store.expire_deposits(NOW + 1000, "expired unread", NOW + 9000) == []
    gone = store.get_message(old["id"])
    assert (gone["status"], gone["reason"], store.in_mailbox_count()) == ("failed", "expired unread", 1)
    assert store.mark_delivered(old["id"], "direct", NOW + 9500, recipient="bob") is True
    assert store.get_message(old["id"])["via"] == "mailbox"


def test_mark_delivered_is_idempotent(store):
    """A repeated acknowledgement, or one for an unknown id, changes nothing and returns False."""
    a = store.add_outgoing("bob", "a", NOW)
    assert store.mark_delivered(a["id"], "direct", NOW) is True
    assert store.mark_delivered(a["id"], "mailbox", NOW + 9) is False
    assert store.mark_delivered("0" * 32, "direct", NOW) is False
    again = store.get_message(a["id"])
    assert (again["via"], again["updated_at"]) == ("direct", NOW)


def test_mark_failed(store):
    """A message whose mailbox deposit expired unread is failed, with the reason, and no longer waiting."""
    a, b = store.add_outgoing("bob", "a", NOW), store.add_outgoing("bob", "b", NOW)
    store.mark_deposited(a["id"], "mbx-1", NOW)
    assert store.mark_failed(a["id"], "mailbox deposit expired unread", NOW + 1) is True
    assert store.mark_failed(b["id"], "peer unknown", NOW + 1) is True
    assert store.outbox_count() == 0
    assert store.get_message(a["id"])["reason"] == "mailbox deposit expired unread"
    assert store.mark_failed(a["id"], "again", NOW + 2) is False


def test_marks_ignore_incoming_messages(store):
    """Delivery marks only apply to outgoing messages."""
    msg = incoming()
    store.add_incoming(msg, NOW)
    assert not store.mark_delivered(msg["id"], "direct", NOW)
    assert store.get_message(msg["id"])["status"] == "received"


def test_outbox_count_after_reopen(path):
    """The outbox (and its count) is persistent."""
    s = Storage(path)
    ids = [s.add_outgoing("bob", str(i), NOW)["id"] for i in range(4)]
    s.mark_delivered(ids[1], "direct", NOW)
    s.close()
    s = Storage(path)
    assert s.outbox_count() == 3 and [m["id"] for m in s.outbox("bob")] == [ids[0], ids[2], ids[3]]
    s.close()


# --- incoming -----------------------------------------------------------------------------------------------


def test_incoming_stored(store):
    """An incoming message is stored as received in the sender's conversation."""
    msg = incoming(7, body="salut")
    assert store.add_incoming(msg, NOW + 100) is True
    [got] = store.history("bob")
    assert {k: got[k] for k in ("id", "sender", "seq", "ts", "body", "direction", "status", "received_at")} == {
        "id": msg["id"], "sender": "bob", "seq": 7, "ts": NOW + 7, "body": "salut", "direction": "in",
        "status": "received", "received_at": NOW + 100}
    assert store.has_message(msg["id"])


def test_duplicate_incoming_dropped(store):
    """A message id seen before is refused (False) and stored only once, even if the copy differs."""
    msg = incoming(1)
    assert store.add_incoming(msg, NOW) is True
    assert store.add_incoming(dict(msg, body="changed", seq=2), NOW + 1) is False
    assert [m["body"] for m in store.history()] == ["message 1"]
    assert store.last_seq("bob", "bob") == 1
    assert store.conversations() == [{"conversation": "bob", "count": 1, "last_ts": NOW + 1}]


def test_duplicate_after_reopen_dropped(path):
    """Duplicates are recognised across restarts."""
    s = Storage(path)
    msg = incoming(1)
    s.add_incoming(msg, NOW)
    s.close()
    s = Storage(path)
    assert s.add_incoming(msg, NOW) is False
    s.close()


def test_last_seq(store):
    """last_seq is the highest seq received from a sender, 0 before any, whatever the order: a sender numbers
    everything it sends us (chat and room messages) in one sequence, kept under its one-to-one conversation."""
    assert store.last_seq("bob", "bob") == 0
    for n in (1, 3, 2):
        store.add_incoming(incoming(n), NOW)
    assert store.last_seq("bob", "bob") == 3
    store.add_incoming(incoming(9, room="General"), NOW)
    store.add_incoming(incoming(5, sender="carol"), NOW)
    assert store.last_seq("bob", "bob") == 9
    assert store.last_seq("carol", "carol") == 5


def test_room_post_shows_once_and_queues_a_copy_per_member(store):
    post, copies = store.add_room_post("G1", "hello room", ["bob", "carol"], NOW)
    assert post["conversation"] == "#g1" and post["status"] == "sent" and post["recipient"] is None
    assert [c["recipient"] for c in copies] == ["bob", "carol"] and len({c["id"] for c in copies}) == 2
    assert all(c["room"] == "G1" and c["conversation"] == "~#g1" for c in copies)
    assert [m["id"] for m in store.history("#g1")] == [post["id"]]
    assert [m["id"] for m in store.history()] == [post["id"]]
    assert {m["id"] for m in store.outbox()} == {c["id"] for c in copies}
    assert [c["conversation"] for c in store.conversations()] == ["#g1"]
    store.add_outgoing("bob", "direct", NOW)
    assert [m["seq"] for m in store.outbox("bob")] == [1, 2]  # one sequence per recipient


def test_incoming_room_message(store):
    """A room message lands in "#" + canonical room, with no recipient."""
    store.add_incoming(incoming(1, room="G1"), NOW)
    [got] = store.history("#g1")
    assert (got["room"], got["recipient"], got["conversation"]) == ("G1", None, "#g1")


@pytest.mark.parametrize("bad", [
    {"sender": "bob", "seq": 1, "ts": 1, "body": "x"},
    {"id": "xyz", "sender": "bob", "seq": 1, "ts": 1, "body": "x"},
    {"id": "a" * 32, "sender": "bob", "seq": "1", "ts": 1, "body": "x"},
    {"id": "a" * 32, "sender": "bob", "seq": True, "ts": 1, "body": "x"},
    {"id": "a" * 32, "sender": "bob", "seq": -1, "ts": 1, "body": "x"},
    {"id": "a" * 32, "sender": "bob", "seq": 1, "ts": 1, "body": b"x"},
    {"id": "a" * 32, "sender": "bob", "seq": 1, "ts": 1, "body": "x", "room": "no spaces"},
    {"id": "a" * 32, "sender": "bob", "seq": 1, "ts": 1, "body": "x", "via": {}},
])
def test_malformed_incoming_refused(store, bad):
    """A malformed incoming message raises ValueError with a reason and leaves the open group intact."""
    kept = store.add_outgoing("carol", "kept", NOW)
    with pytest.raises(ValueError) as info:
        store.add_incoming(bad, NOW)
    assert str(info.value)
    store.commit()
    assert [m["id"] for m in store.history()] == [kept["id"]]


# --- history ------------------------------------------------------------------------------------------------


def test_history_newest_page_oldest_first(store):
    """history returns the newest `limit` messages, oldest first."""
    for i in range(10):
        store.add_outgoing("bob", str(i), NOW + i)
    assert [m["body"] for m in store.history("bob", limit=3)] == ["7", "8", "9"]


def test_history_paging(store):
    """Passing the first rowid of a page as before_rowid gives the page before, down to the first message."""
    for i in range(250):
        store.add_outgoing("bob", str(i), NOW + i)
    pages, before = [], None
    while True:
        page = store.history("bob", limit=100, before_rowid=before)
        if not page:
            break
        pages.append([int(m["body"]) for m in page])
        before = page[0]["rowid"]
    assert pages == [list(range(150, 250)), list(range(50, 150)), list(range(50))]


def test_history_by_conversation(store):
    """history(conversation) only shows that conversation; history() interleaves all in arrival order."""
    store.add_outgoing("bob", "to bob", NOW)
    store.add_incoming(incoming(1, sender="carol", body="from carol"), NOW)
    store.add_incoming(incoming(1, body="from bob"), NOW)
    store.add_outgoing("x", "room", NOW, room="General")
    assert [m["body"] for m in store.history("bob")] == ["to bob", "from bob"]
    assert [m["body"] for m in store.history("#general")] == ["room"]
    assert [m["body"] for m in store.history()] == ["to bob", "from carol", "from bob", "room"]
    assert store.history("nobody") == [] and store.history(limit=0) == []


def test_conversations(store):
    """conversations lists each conversation with its count and last ts, most recently active first."""
    store.add_outgoing("bob", "a", NOW + 1)
    store.add_incoming(incoming(1, sender="carol"), NOW)  # ts NOW + 1
    store.add_incoming(incoming(2, body="b"), NOW)  # ts NOW + 2
    assert store.conversations() == [
        {"conversation": "bob", "count": 2, "last_ts": NOW + 2},
        {"conversation": "carol", "count": 1, "last_ts": NOW + 1},
    ]


def test_negative_limit_refused(store):
    """A negative limit is an error (SQLite would read it as 'no limit')."""
    with pytest.raises(ValueError):
        store.history(limit=-1)


# --- text ---------------------------------------------------------------------------------------------------

TEXTS = [
    "سلام دنیا! این یک آزمایش است ۱۲۳",  # Persian, with Persian digits
    "👋🏽 hello 🇮🇷",  # skin tone modifier, flag pair
    "👨\u200d👩\u200d👧\u200d👦 family",  # ZWJ sequence
    "abc \u202edcba\u202c \u200f!",  # RIGHT-TO-LEFT OVERRIDE, POP, RTL mark
    "e\u0301 a\u0308\u0323 \u1100\u1161",  # combining marks, conjoining jamo (NFD forms kept as they are)
    "nul\x00inside\r\n\ttabs",
    "\U0010fffd \ufeff \uffff",
    "",
]


@pytest.mark.parametrize("text", TEXTS)
def test_unicode_round_trip(path, text):
    """Any Unicode text comes back byte for byte, in both directions and after a reopen."""
    s = Storage(path, name="alice")
    out = s.add_outgoing("bob", text, NOW)
    s.add_incoming(incoming(1, body=text, room="G1"), NOW)
    s.put("status", {"text": text})
    s.close()
    s = Storage(path)
    bodies = [m["body"] for m in s.history()]
    assert [b.encode("utf-8") for b in bodies] == [text.encode("utf-8")] * 2
    assert s.outbox()[0]["body"] == out["body"] == text
    assert s.get("status") == {"text": text}
    s.close()


@settings(max_examples=200)
@given(text=st.text())
def test_any_text_round_trips(tmp_path_factory, text):
    """Hypothesis: every valid Unicode string is stored and returned unchanged."""
    s = Storage(db_path(str(tmp_path_factory.mktemp("t"))))
    msg = s.add_outgoing("bob", text, NOW)
    assert s.get_message(msg["id"])["body"] == text
    s.close()


def test_lone_surrogate_refused(store):
    """A lone surrogate raises a clear ValueError and stores nothing (the seq number is not used up)."""
    with pytest.raises(ValueError, match=r"body contains a lone surrogate \(U\+D83D at index 2\)"):
        store.add_outgoing("bob", "ab\ud83d", NOW)
    with pytest.raises(ValueError, match="lone surrogate"):
        store.add_incoming(incoming(1, body="\udcff"), NOW)
    with pytest.raises(ValueError, match="sender contains a lone surrogate"):
        store.add_incoming(incoming(1, sender="b\ud800b"), NOW)
    assert store.history() == [] and store.outbox_count() == 0
    assert store.add_outgoing("bob", "ok", NOW)["seq"] == 1


def test_invalid_message_is_a_bad_request():
    """Refused input is both a ValueError and a p2pd BadRequest, so the edges report it as such."""
    from p2pd.errors import BadRequest

    assert issubclass(InvalidMessage, ValueError) and issubclass(InvalidMessage, BadRequest)


# --- speed --------------------------------------------------------------------------------------------------


def test_throughput_smoke(store):
    """20,000 messages stored and acknowledged, committing every 500, take well under 10 s (smoke test)."""
    n = 20_000
    start = time.perf_counter()
    ids = []
    for i in range(n):
        ids.append(store.add_outgoing("bob%d" % (i % 8), "message number %d" % i, NOW + i)["id"])
        if i % 500 == 499:
            store.commit()
    store.commit()
    middle = time.perf_counter()
    for i, msg_id in enumerate(ids):
        assert store.mark_delivered(msg_id, "direct", NOW + n + i)
        if i % 500 == 499:
            store.commit()
    store.commit()
    end = time.perf_counter()
    print("\nthroughput: add_outgoing %.0f/s, mark_delivered %.0f/s, %d of each in %.2f s"
          % (n / (middle - start), n / (end - middle), n, end - start))
    assert store.outbox_count() == 0
    assert end - start < 10


# --- model check --------------------------------------------------------------------------------------------

RECIPIENTS = st.sampled_from(["bob", "carol", "dave"])


class StorageMachine(RuleBasedStateMachine):
    """Any sequence of sends, acknowledgements, deposits, failures, receptions, commits and restarts keeps the
    outbox equal to the pending messages, in seq order, with every id stored exactly once."""

    ids = Bundle("ids")

    @initialize()
    def open(self):
        self.dir = tempfile.mkdtemp()
        self.path = db_path(self.dir)
        self.s = Storage(self.path, name="alice")
        self.status = {}  # id -> expected status
        self.seq = {}  # recipient -> last seq used
        self.last_in = {}  # (sender, conversation) -> highest seq

    def teardown(self):
        if hasattr(self, "s"):
            self.s.close()
            shutil.rmtree(self.dir)

    @rule(target=ids, recipient=RECIPIENTS, body=st.text(max_size=20))
    def send(self, recipient, body):
        msg = self.s.add_outgoing(recipient, body, NOW)
        self.seq[recipient] = self.seq.get(recipient, 0) + 1
        assert msg["seq"] == self.seq[recipient]
        assert msg["id"] not in self.status
        self.status[msg["id"]] = "pending"
        return msg["id"]

    @rule(msg_id=st.one_of(ids, st.just("f" * 32)), via=st.sampled_from(["direct", "mailbox"]))
    def ack(self, msg_id, via):
        expected = self.status.get(msg_id) in ("pending", "queued", "failed")
        assert self.s.mark_delivered(msg_id, via, NOW) is expected
        if expected:
            self.status[msg_id] = "delivered"

    @rule(msg_id=ids)
    def deposit(self, msg_id):
        expected = self.status[msg_id] == "pending"
        assert self.s.mark_deposited(msg_id, "mbx", NOW) is expected
        if expected:
            self.status[msg_id] = "queued"

    @rule(msg_id=ids)
    def fail(self, msg_id):
        expected = self.status[msg_id] in ("pending", "queued")
        assert self.s.mark_failed(msg_id, "expired", NOW) is expected
        if expected:
            self.status[msg_id] = "failed"

    @rule(target=ids, msg_id=st.one_of(ids, st.binary(min_size=16, max_size=16).map(bytes.hex)),
          sender=RECIPIENTS, seq=st.integers(0, 50), room=st.sampled_from([None, "General"]))
    def receive(self, msg_id, sender, seq, room):
        expected = msg_id not in self.status
        assert self.s.add_incoming(incoming(seq, sender=sender, room=room, msg_id=msg_id), NOW) is expected
        if expected:
            self.status[msg_id] = "received"
            key = (sender, sender)  # one sequence per sender, chat and rooms alike
            self.last_in[key] = max(self.last_in.get(key, 0), seq)
        return msg_id

    @rule()
    def commit(self):
        self.s.commit()

    @rule()
    def restart(self):
        self.s.close()
        self.s = Storage(self.path, name="alice")

    @invariant()
    def outbox_is_pending(self):
        out = self.s.outbox(limit=10_000)
        pending = {i for i, status in self.status.items() if status == "pending"}
        assert [m["id"] for m in out if m["status"] == "pending"] == [m["id"] for m in out]
        assert {m["id"] for m in out} == pending and len(out) == len(pending) == self.s.outbox_count()
        assert [(m["recipient"], m["seq"]) for m in out] == sorted((m["recipient"], m["seq"]) for m in out)
        assert self.s.outbox_recipients() == sorted({m["recipient"] for m in out})

    @invariant()
    def history_matches(self):
        stored = self.s.history(limit=10_000)
        assert len({m["id"] for m in stored}) == len(stored)
        assert {m["id"]: m["status"] for m in stored} == self.status
        assert sum(c["count"] for c in self.s.conversations()) == len(stored)
        for (sender, conversation), seq in self.last_in.items():
            assert self.s.last_seq(sender, conversation) == seq


TestStorageModel = StorageMachine.TestCase
TestStorageModel.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)


# --- the composed store -------------------------------------------------------------------------------------

API = {
    "add_incoming": "(self, msg: dict, now_ms: int) -> bool",
    "add_outgoing": "(self, recipient: str, body: str, now_ms: int, room: str | None = None,"
                    " conversation: str | None = None) -> dict",
    "add_room_post": "(self, room: str, body: str, recipients, now_ms: int) -> tuple",
    "cached_hash": "(self, path: str, st) -> tuple | None",
    "checkpoint": "(self)",
    "close": "(self)",
    "commit": "(self)",
    "conversations": "(self) -> list[dict]",
    "find_transfer": "(self, peer: str, direction: str, fingerprint: str, statuses) -> dict | None",
    "get": "(self, key: str, default=None)",
    "get_message": "(self, msg_id: str) -> dict | None",
    "get_transfer": "(self, tid: str) -> dict | None",
    "has_message": "(self, msg_id: str) -> bool",
    "history": "(self, conversation: str | None = None, limit: int = 100, before_rowid: int | None = None)"
               " -> list[dict]",
    "last_seq": "(self, sender: str, conversation: str) -> int",
    "mark_delivered": "(self, msg_id: str, via: str, now_ms: int, recipient: str | None = None) -> bool",
    "mark_deposited": "(self, msg_id: str, mailbox_id: str, now_ms: int) -> bool",
    "mark_failed": "(self, msg_id: str, reason: str, now_ms: int) -> bool",
    "outbox": "(self, recipient: str | None = None, limit: int = 1000) -> list[dict]",
    "outbox_count": "(self) -> int",
    "outbox_recipients": "(self) -> list[str]",
    "put": "(self, key: str, value)",
    "add_quarantined": "(self, item_id: str, sender, reason: str, payload, now_ms: int, keep: int = 1000) -> bool",
    "quarantine_count": "(self) -> int",
    "quarantined": "(self, limit: int = 100) -> list",
    "received_bytes": "(self, sender: str) -> int",
    "put_hash": "(self, path: str, st, root: str, digests: bytes)",
    "put_transfer": "(self, record: dict, now_ms: int)",
    "settings_with_prefix": "(self, prefix: str) -> list",
    "transfers": "(self, limit: int = 100, statuses=None) -> list[dict]",
    "owe_receipt": "(self, sender: str, msg_id: str) -> None",
    "owed_receipts": "(self, sender: str, limit: int = 1000) -> list",
    "receipt_senders": "(self) -> list",
    "receipts_sent": "(self, sender: str, ids) -> None",
    "in_mailbox_count": "(self) -> int",
    "expire_deposits": "(self, before_ms: int, reason: str, now_ms: int, limit: int = 1000) -> list",
    "put_preview": "(self, tid: str, index: int, jpeg: bytes, now_ms: int, keep: int = 1000)",
    "preview": "(self, tid: str, index: int) -> bytes | None",
}


def test_public_api_is_the_one_callers_use():
    """Storage, composed of its parts, offers exactly the methods (names and signatures) it had as one class,
    plus the ``pending`` property and the ``name`` of the sender it records (and, since issue 12, the quarantine
    of undeliverable mailbox items, and the mailbox receipts; since issue 14, the previews of image offers)."""
    methods = {name: str(inspect.signature(getattr(Storage, name))) for name in dir(Storage)
               if not name.startswith("_") and inspect.isfunction(getattr(Storage, name))}
    assert methods == API
    assert isinstance(Storage.pending, property)
    assert str(inspect.signature(Storage)) == "(path: str, name: str | None = None)"


def test_storage_path_and_name(path):
    """The constructor keeps the database path and this peer's name, the sender of what it sends (None if not
    given)."""
    s = Storage(path, name="alice")
    assert (s.path, s.name) == (path, "alice") and s.add_outgoing("bob", "x", NOW)["sender"] == "alice"
    s.close()
    s = Storage(path)
    assert s.name is None and s.add_outgoing("bob", "x", NOW)["sender"] is None
    s.close()


def test_storage_provides_the_store_interfaces(store):
    """Storage provides IChatStore and IFileStore, and between them they declare its whole public API."""
    assert verifyObject(IChatStore, store) and verifyObject(IFileStore, store)
    declared = set(IChatStore.names(all=True)) | set(IFileStore.names(all=True))
    assert declared == set(API) | {"pending"}


def test_the_bytes_stored_from_each_sender_are_counted_for_its_quota(path):
    s = Storage(path, name="alice")
    assert s.received_bytes("bob") == 0
    s.add_incoming({"id": "1" * 32, "sender": "bob", "seq": 1, "ts": 1, "body": "hé"}, 5)
    s.add_incoming({"id": "2" * 32, "sender": "bob", "seq": 2, "ts": 2, "body": "x" * 10, "room": "G1"}, 5)
    s.add_incoming({"id": "2" * 32, "sender": "bob", "seq": 2, "ts": 2, "body": "again"}, 5)  # a duplicate
    assert s.received_bytes("bob") == 13
    s.commit()
    assert s.received_bytes("bob") == 13 and s.received_bytes("carol") == 0
    s.close()
    again = Storage(path, name="alice")
    assert again.received_bytes("bob") == 13
    again.add_incoming({"id": "3" * 32, "sender": "bob", "seq": 3, "ts": 3, "body": "abc"}, 5)
    again.commit()
    assert again.received_bytes("bob") == 16
