"""Delivery receipts through the mailbox, both ways.

The receipts we owe: for each mailbox item we collected and stored, its sender gets a receipt (an ``ack`` of the
message id), over a link or sealed into the sender's own mailbox. The row is written in the same transaction as
the message, so a crash never loses a receipt of a message that was kept; it goes once the receipt is out.

Our messages that wait in a mailbox (status ``queued``): how many there are, and those whose deposit was never
collected before the registry let it expire, which become ``failed`` (a receipt that comes later still makes them
``delivered``)."""

from p2pd.peer.storage import checks
from p2pd.peer.storage.db import Database, writes

_EXPIRED = (
    "UPDATE messages SET status = 'failed', reason = ?, updated_at = ? WHERE rowid IN (SELECT rowid FROM messages"
    " WHERE status = 'queued' AND updated_at < ? LIMIT ?) AND status = 'queued' RETURNING id, recipient"
)


class Receipts(Database):
    """The ``receipts`` table, and the ``messages_in_mailbox`` index."""

    @writes
    def owe_receipt(self, sender: str, msg_id: str) -> None:
        """Remember that *sender* gets a receipt for its message *msg_id* (once; owing it twice is one)."""
        checks.text("sender", sender)
        checks.text("msg_id", msg_id)
        self._db.execute("INSERT OR IGNORE INTO receipts VALUES (?, ?)", (sender, msg_id))

    def owed_receipts(self, sender: str, limit: int = 1000) -> list:
        """Up to *limit* of the message ids we owe *sender* a receipt for."""
        rows = self._db.execute("SELECT id FROM receipts WHERE sender = ? LIMIT ?", (sender, checks.limit(limit)))
        return [row[0] for row in rows]

    def receipt_senders(self) -> list:
        """The senders we owe receipts to, sorted."""
        return [row[0] for row in self._db.execute("SELECT DISTINCT sender FROM receipts ORDER BY sender")]

    @writes
    def receipts_sent(self, sender: str, ids) -> None:
        """The receipts for *ids* are out: forget them."""
        self._db.executemany("DELETE FROM receipts WHERE sender = ? AND id = ?", [(sender, i) for i in ids])

    def in_mailbox_count(self) -> int:
        """How many of our messages wait in a recipient's mailbox (deposited, no receipt yet)."""
        return self._db.execute("SELECT count(*) FROM messages WHERE status = 'queued'").fetchone()[0]

    @writes
    def expire_deposits(self, before_ms: int, reason: str, now_ms: int, limit: int = 1000) -> list:
        """Mark up to *limit* messages deposited before *before_ms* and still without a receipt ``failed`` with
        *reason*; the ``(id, recipient)`` of each."""
        checks.integer("before_ms", before_ms)
        checks.text("reason", reason)
        return [tuple(row) for row in self._db.execute(
            _EXPIRED, (reason, checks.integer("now_ms", now_ms), before_ms, checks.limit(limit)))]
