"""Chat history: the messages of both directions, the incoming ones with their sequence numbers, and the
summary of each conversation.

Messages are plain dicts with the keys of :data:`MESSAGE_FIELDS`:

``id`` (32 hex digits), ``conversation`` (the peer name for one-to-one chat, ``"#" + canonical room`` for a
room), ``sender``, ``recipient`` (for outgoing messages the peer it is delivered to; for incoming ones what the
sender said, None for room messages), ``room`` (display name or None), ``seq``, ``ts`` (ms, sender's clock),
``body``, ``direction`` (``"in"``/``"out"``), ``status``, ``via``, ``received_at`` (ms, when stored here),
``mailbox_id``, ``reason`` (why it failed), ``updated_at`` (ms, last status change) and ``rowid`` (for paging).

Incoming messages are ``received``; outgoing ones are written by :mod:`p2pd.peer.storage.outbox`.
"""

import re
import sqlite3

from p2pd.peer.storage import checks
from p2pd.peer.storage.db import Database, writes
from p2pd.peer.storage.errors import InvalidMessage, StorageError

MESSAGE_FIELDS = (
    "id", "conversation", "sender", "recipient", "room", "seq", "ts", "body", "direction", "status", "via",
    "received_at", "mailbox_id", "reason", "updated_at", "rowid",
)
COLUMNS = ", ".join("m." + field for field in MESSAGE_FIELDS)
_ID_RE = re.compile(r"[0-9a-f]{32}")

INSERT_MESSAGE = (
    "INSERT INTO messages (id, conversation, sender, recipient, room, seq, ts, body, direction, status, via,"
    " received_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_INCOMING = INSERT_MESSAGE.replace("INSERT", "INSERT OR IGNORE", 1)
_SEEN_SEQ = (
    "INSERT INTO seq_in VALUES (?, ?, ?)"
    " ON CONFLICT (sender, conversation) DO UPDATE SET last = max(last, excluded.last)"
)
_COUNT_MESSAGES = (
    "INSERT INTO conversations VALUES (?, ?, ?, ?) ON CONFLICT (conversation) DO UPDATE"
    " SET count = count + excluded.count, last_ts = excluded.last_ts, last_rowid = excluded.last_rowid"
)
_HISTORY = {
    (False, False): "SELECT %s FROM messages m WHERE m.conversation NOT LIKE '~%%' ORDER BY m.rowid DESC LIMIT ?",
    (False, True): (
        "SELECT %s FROM messages m WHERE m.conversation NOT LIKE '~%%' AND m.rowid < ? ORDER BY m.rowid DESC LIMIT ?"
    ),
    (True, False): "SELECT %s FROM messages m WHERE m.conversation = ? ORDER BY m.rowid DESC LIMIT ?",
    (True, True): (
        "SELECT %s FROM messages m WHERE m.conversation = ? AND m.rowid < ? ORDER BY m.rowid DESC LIMIT ?"
    ),
}
_HISTORY = {key: sql % COLUMNS for key, sql in _HISTORY.items()}


def message(row) -> dict:
    """The message dict of a row selected as :data:`COLUMNS`."""
    return dict(zip(MESSAGE_FIELDS, row))


_ADD_USAGE = ("INSERT INTO peer_usage (sender, bytes) VALUES (?, ?) "
              "ON CONFLICT (sender) DO UPDATE SET bytes = bytes + excluded.bytes")


class Messages(Database):
    """History, incoming messages and the conversation summary."""

    def _reset_caches(self):
        super()._reset_caches()
        self._last_seq = {}  # (sender, conversation) -> highest seq received, as the database (+ open group) has it
        self._counts = {}  # conversation -> [messages, last ts, last rowid] added in the open write group
        self._usage = {}  # sender -> bytes of its messages stored (committed), read once per sender
        self._usage_added = {}  # sender -> bytes of its messages added in the open write group

    def _before_commit(self):
        super()._before_commit()
        self._write_counts()
        if self._usage_added:
            added, self._usage_added = self._usage_added, {}
            self._db.executemany(_ADD_USAGE, list(added.items()))
            for sender, n in added.items():
                if sender in self._usage:
                    self._usage[sender] += n

    def received_bytes(self, sender: str) -> int:
        """Bytes of the message bodies stored from *sender* (one-to-one and room messages), for its quota."""
        stored = self._usage.get(sender)
        if stored is None:
            row = self._db.execute("SELECT bytes FROM peer_usage WHERE sender = ?", (sender,)).fetchone()
            stored = self._usage[sender] = row[0] if row else 0
        return stored + self._usage_added.get(sender, 0)

    def _count(self, conversation, ts, rowid):
        """Note one new message of *conversation*; the ``conversations`` table gets it once per commit."""
        counted = self._counts.get(conversation)
        if counted is None:
            self._counts[conversation] = [1, ts, rowid]
        else:
            counted[0] += 1
            counted[1] = ts
            counted[2] = rowid

    def _write_counts(self):
        """Fold the noted counts into ``conversations`` (inside the open transaction)."""
        if self._counts:
            counts, self._counts = self._counts, {}
            self._db.executemany(_COUNT_MESSAGES, [(name, *counted) for name, counted in counts.items()])

    # --- incoming ------------------------------------------------------------------------------------------

    @writes
    def add_incoming(self, msg: dict, now_ms: int) -> bool:
        """Store a message from a peer (``id``, ``sender``, ``seq``, ``ts``, ``body``, optional ``room`` and
        ``recipient``) as ``received``; False, storing nothing, if a message with this id is already stored.

        The conversation is ``"#" + canonical room`` for a room message, else the sender. The highest seq seen
        per (sender, conversation) is kept for :meth:`last_seq`.
        """
        if not isinstance(msg, dict):
            raise InvalidMessage("a message must be a dict, not %s" % type(msg).__name__)
        try:
            msg_id, sender, seq, ts, body = msg["id"], msg["sender"], msg["seq"], msg["ts"], msg["body"]
        except KeyError as e:
            raise InvalidMessage("a message needs the field %s" % e) from None
        if not isinstance(msg_id, str) or not _ID_RE.fullmatch(msg_id):
            raise InvalidMessage("a message id is 32 lowercase hex digits, not %r" % (msg_id,))
        checks.text("sender", sender)
        checks.integer("seq", seq, minimum=0)
        checks.integer("ts", ts)
        checks.text("body", body)
        checks.integer("now_ms", now_ms)
        room = checks.text("room", msg.get("room"), optional=True)
        recipient = checks.text("recipient", msg.get("recipient"), optional=True)
        via = checks.text("via", msg.get("via"), optional=True)
        conversation = sender if room is None else checks.room_conversation(room)
        db = self._db
        cursor = db.execute(_INSERT_INCOMING, (
            msg_id, conversation, sender, recipient, room, seq, ts, body, "in", "received", via,
            now_ms, now_ms,
        ))
        if cursor.rowcount != 1:
            return False
        # The sender numbers everything it sends us in one sequence (chat and rooms alike): the seq is kept per
        # sender, under the conversation key of its one-to-one chat.
        db.execute(_SEEN_SEQ, (sender, sender, seq))
        key = (sender, sender)
        last = self._last_seq.get(key)
        if last is not None and seq > last:
            self._last_seq[key] = seq
        self._count(conversation, ts, cursor.lastrowid)
        self._usage_added[sender] = self._usage_added.get(sender, 0) + len(body.encode("utf-8", "surrogatepass"))
        return True

    def last_seq(self, sender: str, conversation: str) -> int:
        """The highest seq received from *sender* in *conversation*, 0 if none."""
        key = (sender, conversation)
        last = self._last_seq.get(key)
        if last is None:
            row = self._db.execute(
                "SELECT last FROM seq_in WHERE sender = ? AND conversation = ?", key
            ).fetchone()
            last = self._last_seq[key] = 0 if row is None else row[0]
        return last

    # --- reading -------------------------------------------------------------------------------------------

    def has_message(self, msg_id: str) -> bool:
        """Whether a message (either direction) with this id is stored."""
        return self._db.execute("SELECT 1 FROM messages WHERE id = ?", (msg_id,)).fetchone() is not None

    def get_message(self, msg_id: str) -> dict | None:
        """The stored message with this id, or None."""
        row = self._db.execute("SELECT %s FROM messages m WHERE m.id = ?" % COLUMNS, (msg_id,)).fetchone()
        return None if row is None else message(row)

    def history(self, conversation: str | None = None, limit: int = 100,
                before_rowid: int | None = None) -> list[dict]:
        """The newest *limit* messages of *conversation* (None: of all), oldest first.

        For the page before, pass the first message's ``rowid`` as *before_rowid*.
        """
        params = [] if conversation is None else [conversation]
        if before_rowid is not None:
            params.append(checks.integer("before_rowid", before_rowid))
        params.append(checks.limit(limit))
        rows = self._db.execute(_HISTORY[conversation is not None, before_rowid is not None], params).fetchall()
        rows.reverse()
        return [message(row) for row in rows]

    def conversations(self) -> list[dict]:
        """Every conversation with its message count and the ``ts`` of its latest message, most recent first."""
        if self._counts:
            try:
                self._write_counts()
            except sqlite3.Error as e:
                self._abort()
                raise StorageError("the message store failed: %s" % (e,)) from e
        return [
            {"conversation": name, "count": count, "last_ts": last_ts}
            for name, count, last_ts in self._db.execute(
                "SELECT conversation, count, last_ts FROM conversations WHERE conversation NOT LIKE '~%' "
                "ORDER BY last_rowid DESC"
            )
        ]
