"""Outgoing messages: the per-recipient sequence numbers, the outbox, room posts and the delivery marks.

Outgoing status: ``pending`` (in the outbox) -> ``delivered`` (acknowledged by the recipient, ``via`` "direct"
or "mailbox"), or ``queued`` (deposited in the registry mailbox) -> ``delivered``, or ``failed``. A room post
is ``sent``: it is shown once in history and each member gets a copy of its own in the outbox.

The outbox points at history by rowid (foreign keys are off); this part keeps the two in step inside one
transaction.
"""

import os

from p2pd.peer.storage import checks
from p2pd.peer.storage.db import writes
from p2pd.peer.storage.messages import COLUMNS, INSERT_MESSAGE, MESSAGE_FIELDS, Messages, message

_NEXT_SEQ = (
    "INSERT INTO seq_out VALUES (?, 1) ON CONFLICT (recipient) DO UPDATE SET last = last + 1 RETURNING last"
)
_INSERT_OUTBOX = "INSERT INTO outbox VALUES (?, ?, ?)"
_DELETE_OUTBOX = "DELETE FROM outbox WHERE recipient = ? AND seq = ?"
# Finds and settles the message in one statement; its outbox row (there is one only if it was pending) goes next.
# A message that went into a mailbox was delivered "via mailbox", whatever carried its receipt back. Only its
# recipient may settle it, when one is named (a receipt from another peer must not).
_SETTLE = (
    "UPDATE messages SET status = ?,"
    " via = CASE WHEN status IN ('queued', 'failed') AND mailbox_id IS NOT NULL THEN 'mailbox'"
    " ELSE coalesce(?, via) END,"
    " mailbox_id = coalesce(?, mailbox_id), reason = ?, updated_at = ?"
    " WHERE id = ? AND direction = 'out' AND status IN (%s) AND (? IS NULL OR recipient = ?)"
    " RETURNING recipient, seq"
)
_SETTLE_FOR = {
    allowed: _SETTLE % ", ".join("'%s'" % status for status in allowed)
    for allowed in (("pending", "queued", "failed"), ("pending",), ("pending", "queued"))
}
_OUTBOX_ALL = (
    "SELECT %s FROM outbox o JOIN messages m ON m.rowid = o.message ORDER BY o.recipient, o.seq LIMIT ?"
    % COLUMNS
)
_OUTBOX_ONE = (
    "SELECT %s FROM outbox o JOIN messages m ON m.rowid = o.message WHERE o.recipient = ? ORDER BY o.seq LIMIT ?"
    % COLUMNS
)
# DISTINCT would walk every outbox row; this hops from one recipient to the next through the primary key.
_OUTBOX_RECIPIENTS = (
    "WITH RECURSIVE r(name) AS (SELECT min(recipient) FROM outbox"
    " UNION ALL SELECT (SELECT min(recipient) FROM outbox WHERE recipient > r.name) FROM r WHERE r.name IS NOT NULL)"
    " SELECT name FROM r WHERE name IS NOT NULL"
)


def new_id(now_ms: int) -> str:
    """A fresh message id: 12 hex digits of time, then 80 random bits.

    Still unguessable and unique, but consecutive messages sit side by side in the id index (and in the
    recipient's), so a commit rewrites a few of its pages, not one page per message.
    """
    return "%012x%s" % (now_ms & 0xFFFFFFFFFFFF, os.urandom(10).hex())


class Outbox(Messages):
    """Outgoing messages and their delivery. ``name`` is this peer's own name, the sender it records."""

    name = None

    def _reset_caches(self):
        super()._reset_caches()
        self._outbox_count = None  # cached count(*) of the outbox; None = ask the database

    def _insert_outgoing(self, conversation, recipient, room, seq, body, status, now_ms) -> dict:
        """Add one outgoing message to history (not to the outbox) and return it."""
        msg_id = new_id(now_ms)
        rowid = self._db.execute(INSERT_MESSAGE, (
            msg_id, conversation, self.name, recipient, room, seq, now_ms, body, "out", status, None,
            now_ms, now_ms,
        )).lastrowid
        self._count(conversation, now_ms, rowid)
        return dict(zip(MESSAGE_FIELDS, (
            msg_id, conversation, self.name, recipient, room, seq, now_ms, body, "out", status, None,
            now_ms, None, None, now_ms, rowid,
        )))

    @writes
    def add_outgoing(self, recipient: str, body: str, now_ms: int, room: str | None = None,
                     conversation: str | None = None) -> dict:
        """Store a new message for *recipient* as ``pending``, in history and in the outbox, and return it.

        Its ``seq`` is the next number of the per-recipient counter (1, 2, ...; it survives restarts). The
        conversation is *conversation* if given, else ``"#" + canonical room`` for a room message, else the
        recipient.
        """
        checks.text("recipient", recipient)
        checks.text("body", body)
        checks.integer("now_ms", now_ms)
        checks.text("room", room, optional=True)
        if conversation is None:
            conversation = recipient if room is None else checks.room_conversation(room)
        else:
            checks.text("conversation", conversation)
        seq = self._db.execute(_NEXT_SEQ, (recipient,)).fetchone()[0]
        msg = self._insert_outgoing(conversation, recipient, room, seq, body, "pending", now_ms)
        self._db.execute(_INSERT_OUTBOX, (recipient, seq, msg["rowid"]))
        if self._outbox_count is not None:
            self._outbox_count += 1
        return msg

    @writes
    def add_room_post(self, room: str, body: str, recipients, now_ms: int) -> tuple:
        """Store a message to *room*: ``(post, copies)``. The post is what our history shows, once, in
        ``"#" + canonical room`` (status ``sent``, in no outbox); each of *recipients* gets a copy of its own
        (own id, the recipient's next seq) in the outbox, kept in the hidden conversation ``"~#" + room``, so
        every member's delivery is tracked, retried and sealed into the mailbox like a one-to-one message."""
        checks.text("body", body)
        checks.integer("now_ms", now_ms)
        conversation = checks.room_conversation(room)
        post = self._insert_outgoing(conversation, None, room, 0, body, "sent", now_ms)
        copies = [self.add_outgoing(r, body, now_ms, room=room, conversation="~" + conversation)
                  for r in recipients]
        return post, copies

    def outbox(self, recipient: str | None = None, limit: int = 1000) -> list[dict]:
        """Undelivered outgoing messages in sending order: by seq for one recipient, else by recipient, seq."""
        if recipient is None:
            rows = self._db.execute(_OUTBOX_ALL, (checks.limit(limit),))
        else:
            rows = self._db.execute(_OUTBOX_ONE, (recipient, checks.limit(limit)))
        return [message(row) for row in rows]

    def outbox_recipients(self) -> list[str]:
        """The recipients that have messages waiting in the outbox, sorted."""
        return [row[0] for row in self._db.execute(_OUTBOX_RECIPIENTS)]

    def outbox_count(self) -> int:
        """How many messages wait in the outbox."""
        if self._outbox_count is None:
            self._outbox_count = self._db.execute("SELECT count(*) FROM outbox").fetchone()[0]
        return self._outbox_count

    # --- delivery ------------------------------------------------------------------------------------------

    def _settle(self, msg_id, allowed, status, via, mailbox_id, reason, now_ms, recipient=None) -> bool:
        """Move an outgoing message whose status is in *allowed* (and whose recipient is *recipient*, if given)
        to *status* and out of the outbox."""
        checks.text("msg_id", msg_id)
        checks.integer("now_ms", now_ms)
        checks.text("recipient", recipient, optional=True)
        found = self._db.execute(_SETTLE_FOR[allowed], (status, via, mailbox_id, reason, now_ms, msg_id,
                                                        recipient, recipient)).fetchone()
        if found is None:
            return False
        if "pending" in allowed and self._db.execute(_DELETE_OUTBOX, found).rowcount:
            if self._outbox_count is not None:
                self._outbox_count -= 1
        return True

    @writes
    def mark_delivered(self, msg_id: str, via: str, now_ms: int, recipient: str | None = None) -> bool:
        """The recipient acknowledged the message (*via* "direct" or "mailbox"; one that went into a mailbox stays
        "mailbox"): ``delivered``, out of the outbox. With *recipient*, only a message to that peer.

        True if this changed it (it was pending, queued in a mailbox or marked failed); False if the id is
        unknown, someone else's or already delivered, so repeated acknowledgements are harmless.
        """
        checks.text("via", via)
        return self._settle(msg_id, ("pending", "queued", "failed"), "delivered", via, None, None, now_ms,
                            recipient)

    @writes
    def mark_deposited(self, msg_id: str, mailbox_id: str, now_ms: int) -> bool:
        """The registry mailbox took the message: ``queued`` via "mailbox", out of the outbox, *mailbox_id* kept.

        True if the message was pending, else False.
        """
        checks.text("mailbox_id", mailbox_id)
        return self._settle(msg_id, ("pending",), "queued", "mailbox", mailbox_id, None, now_ms)

    @writes
    def mark_failed(self, msg_id: str, reason: str, now_ms: int) -> bool:
        """Give up on an undelivered message (e.g. its mailbox deposit expired unread): ``failed`` with *reason*.

        True if the message was pending or queued, else False.
        """
        checks.text("reason", reason)
        return self._settle(msg_id, ("pending", "queued"), "failed", None, None, reason, now_ms)
