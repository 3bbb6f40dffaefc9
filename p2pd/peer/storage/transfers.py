"""File transfer records, both directions: the JSON ``record`` the transfer manager keeps, indexed by peer,
direction, content fingerprint and time of the last update."""

import json

from p2pd.peer.storage import checks
from p2pd.peer.storage.db import Database, writes


class TransferRecords(Database):
    """The ``transfers`` table."""

    @writes
    def put_transfer(self, record: dict, now_ms: int):
        """Insert or replace the transfer *record* (a JSON-able dict with ``tid``, ``direction``, ``peer``,
        ``status`` and ``fingerprint``)."""
        self._db.execute("INSERT OR REPLACE INTO transfers VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (record["tid"], record["direction"], record["peer"], record["status"],
                          record["fingerprint"], now_ms, json.dumps(record, separators=(",", ":"))))

    def get_transfer(self, tid: str) -> dict | None:
        """The record of transfer *tid*, or None."""
        row = self._db.execute("SELECT record FROM transfers WHERE tid = ?", (tid,)).fetchone()
        return None if row is None else json.loads(row[0])

    def transfers(self, limit: int = 100, statuses=None) -> list[dict]:
        """The *limit* most recently updated transfers, newest first (only those in *statuses*, if given)."""
        if statuses:
            marks = ", ".join("?" * len(statuses))
            rows = self._db.execute("SELECT record FROM transfers WHERE status IN (%s) ORDER BY updated_at DESC "
                                    "LIMIT ?" % marks, (*statuses, checks.limit(limit)))
        else:
            rows = self._db.execute("SELECT record FROM transfers ORDER BY updated_at DESC LIMIT ?",
                                    (checks.limit(limit),))
        return [json.loads(row[0]) for row in rows]

    def find_transfer(self, peer: str, direction: str, fingerprint: str, statuses) -> dict | None:
        """The newest transfer of this offer (same peer, direction and content) in one of *statuses*."""
        marks = ", ".join("?" * len(statuses))
        row = self._db.execute(
            "SELECT record FROM transfers WHERE peer = ? AND direction = ? AND fingerprint = ? AND status IN (%s) "
            "ORDER BY updated_at DESC LIMIT 1" % marks, (peer, direction, fingerprint, *statuses)).fetchone()
        return None if row is None else json.loads(row[0])
