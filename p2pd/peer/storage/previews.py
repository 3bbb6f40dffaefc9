"""Previews: the small JPEGs that came with incoming image offers (checked before they were kept), one per
transfer and file, for ``p2pctl preview``. At most :data:`KEEP` are kept (16 KiB each at most): the oldest go
first, and a transfer whose preview went says so."""

from p2pd.peer.storage import checks
from p2pd.peer.storage.db import Database, writes
from p2pd.peer.storage.errors import InvalidMessage

KEEP = 1000  # previews kept at most (16 MiB at most), the oldest go first
MAX_BYTES = 16 << 10  # bytes of one preview (p2pd.core.images.THUMB_BYTES)


class Previews(Database):
    """The ``previews`` table."""

    @writes
    def put_preview(self, tid: str, index: int, jpeg: bytes, now_ms: int, keep: int = KEEP):
        """Keep *jpeg* as the preview of file *index* of transfer *tid* (replacing one kept before)."""
        checks.text("tid", tid)
        if not isinstance(jpeg, bytes) or not 0 < len(jpeg) <= MAX_BYTES:
            raise InvalidMessage("a preview is 1 to %d bytes" % MAX_BYTES)
        self._db.execute("DELETE FROM previews WHERE tid = ? AND item = ?", (tid, checks.integer("index", index, minimum=0)))
        self._db.execute("INSERT INTO previews (tid, item, jpeg, stored_at) VALUES (?, ?, ?, ?)",
                         (tid, index, jpeg, checks.integer("now_ms", now_ms)))
        self._db.execute("DELETE FROM previews WHERE n <= (SELECT n FROM previews ORDER BY n DESC LIMIT 1 OFFSET ?)",
                         (keep,))

    def preview(self, tid: str, index: int) -> bytes | None:
        """The preview of file *index* of transfer *tid*, or None (there was none, or it went)."""
        row = self._db.execute("SELECT jpeg FROM previews WHERE tid = ? AND item = ?", (tid, index)).fetchone()
        return None if row is None else bytes(row[0])
