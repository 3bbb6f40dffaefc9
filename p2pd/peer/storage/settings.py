"""Settings: small JSON values by key (pins ``pin:<peer>``, room memberships ``rooms:<room>``, flags)."""

import json

from p2pd.peer.storage import checks
from p2pd.peer.storage.db import Database, writes
from p2pd.peer.storage.errors import InvalidMessage


class Settings(Database):
    """The ``settings`` table."""

    def get(self, key: str, default=None):
        """The setting *key* as it was put, or *default*."""
        row = self._db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def settings_with_prefix(self, prefix: str) -> list:
        """``(key, value)`` of every setting whose key starts with *prefix*."""
        rows = self._db.execute("SELECT key, value FROM settings WHERE key >= ? AND key < ?",
                                (prefix, prefix + "\uffff"))
        return [(key, json.loads(value)) for key, value in rows]

    @writes
    def put(self, key: str, value):
        """Set *key* to a JSON-able *value* (in the open transaction, like every write)."""
        checks.text("key", key)
        try:
            text = json.dumps(value, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError) as e:
            raise InvalidMessage("setting %r cannot be stored: %s" % (key, e)) from None
        self._db.execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", (key, text))
