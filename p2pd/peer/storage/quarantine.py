"""Quarantine: mailbox items that can never be delivered (unreadable, forged, from a name nobody holds, or signed
by a key other than the one pinned for its sender). They are kept here, so the user can see what was set aside
and why, and acknowledged to the registry, so that one bad item never holds up the ones behind it."""

from p2pd.peer.storage import checks
from p2pd.peer.storage.db import Database, writes

KEEP = 1000  # items kept at most; the oldest go first
MAX_PAYLOAD = 128 << 10  # characters of a sealed payload kept (the registry takes 64 KiB at most)


class Quarantine(Database):
    """The ``quarantine`` table."""

    @writes
    def add_quarantined(self, item_id: str, sender, reason: str, payload, now_ms: int, keep: int = KEEP) -> bool:
        """Keep a mailbox item that cannot be delivered; False if *item_id* is kept already."""
        checks.text("item_id", item_id)
        checks.text("reason", reason)
        kept = self._db.execute(
            "INSERT OR IGNORE INTO quarantine (id, sender, reason, received_at, payload) VALUES (?, ?, ?, ?, ?)",
            (item_id, sender if isinstance(sender, str) else None, reason[:1000], checks.integer("now_ms", now_ms),
             payload[:MAX_PAYLOAD] if isinstance(payload, str) else "")).rowcount == 1
        if kept:
            self._db.execute("DELETE FROM quarantine WHERE rowid <= (SELECT rowid FROM quarantine "
                             "ORDER BY rowid DESC LIMIT 1 OFFSET ?)", (keep,))
        return kept

    def quarantined(self, limit: int = 100) -> list:
        """The newest *limit* quarantined items, newest first (without their payloads)."""
        rows = self._db.execute("SELECT id, sender, reason, received_at FROM quarantine ORDER BY rowid DESC LIMIT ?",
                                (checks.limit(limit),))
        return [{"id": i, "from": s, "reason": r, "received_at": t} for i, s, r, t in rows]

    def quarantine_count(self) -> int:
        return self._db.execute("SELECT count(*) FROM quarantine").fetchone()[0]
