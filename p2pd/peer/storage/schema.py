"""The schema of the store, versioned with ``PRAGMA user_version``.

:data:`MIGRATIONS` holds one function per version step, and :func:`migrate` applies the missing ones, each in
its own transaction. A later feature adds its tables by appending a function, never by editing an old one.
"""

import sqlite3

from p2pd.peer.storage.errors import StorageError


def _to_v1(db):
    """Chat history, outbox, sequence counters, conversation summary, settings."""
    for statement in (
        """CREATE TABLE messages (
               rowid INTEGER PRIMARY KEY,
               id TEXT NOT NULL UNIQUE,
               conversation TEXT NOT NULL,
               sender TEXT,
               recipient TEXT,
               room TEXT,
               seq INTEGER NOT NULL,
               ts INTEGER NOT NULL,
               body TEXT NOT NULL,
               direction TEXT NOT NULL,
               status TEXT NOT NULL,
               via TEXT,
               received_at INTEGER NOT NULL,
               mailbox_id TEXT,
               reason TEXT,
               updated_at INTEGER NOT NULL)""",
        "CREATE INDEX messages_by_conversation ON messages (conversation)",  # + rowid, implicitly: paging
        # Undelivered outgoing messages, in the order they must be sent to each recipient.
        """CREATE TABLE outbox (
               recipient TEXT NOT NULL,
               seq INTEGER NOT NULL,
               message INTEGER NOT NULL,  -- messages.rowid
               PRIMARY KEY (recipient, seq)) WITHOUT ROWID""",
        "CREATE TABLE seq_out (recipient TEXT PRIMARY KEY, last INTEGER NOT NULL) WITHOUT ROWID",
        """CREATE TABLE seq_in (
               sender TEXT NOT NULL, conversation TEXT NOT NULL, last INTEGER NOT NULL,
               PRIMARY KEY (sender, conversation)) WITHOUT ROWID""",
        """CREATE TABLE conversations (
               conversation TEXT PRIMARY KEY, count INTEGER NOT NULL, last_ts INTEGER NOT NULL,
               last_rowid INTEGER NOT NULL) WITHOUT ROWID""",
        "CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    ):
        db.execute(statement)


def _to_v2(db):
    """File transfers (both directions; ``record`` is the JSON the transfer manager keeps) and the hash cache
    of files this peer has offered."""
    for statement in (
        """CREATE TABLE transfers (
               tid TEXT PRIMARY KEY,
               direction TEXT NOT NULL,
               peer TEXT NOT NULL,
               status TEXT NOT NULL,
               fingerprint TEXT NOT NULL,
               updated_at INTEGER NOT NULL,
               record TEXT NOT NULL) WITHOUT ROWID""",
        "CREATE INDEX transfers_by_offer ON transfers (peer, direction, fingerprint)",
        "CREATE INDEX transfers_by_time ON transfers (updated_at)",
        """CREATE TABLE file_hashes (
               path TEXT PRIMARY KEY, dev INTEGER NOT NULL, ino INTEGER NOT NULL, size INTEGER NOT NULL,
               mtime_ns INTEGER NOT NULL, root TEXT NOT NULL, digests BLOB NOT NULL) WITHOUT ROWID""",
    ):
        db.execute(statement)


def _to_v3(db):
    """Mailbox items that cannot be delivered, kept for the user to see (:mod:`~p2pd.peer.storage.quarantine`)."""
    db.execute("""CREATE TABLE quarantine (
                      rowid INTEGER PRIMARY KEY,
                      id TEXT NOT NULL UNIQUE,
                      sender TEXT,
                      reason TEXT NOT NULL,
                      received_at INTEGER NOT NULL,
                      payload TEXT NOT NULL)""")


def _to_v4(db):
    """Bytes stored per sender, for the per-peer storage quota, counted from the history there is."""
    db.execute("CREATE TABLE peer_usage (sender TEXT PRIMARY KEY, bytes INTEGER NOT NULL) WITHOUT ROWID")
    db.execute("INSERT INTO peer_usage SELECT sender, sum(length(CAST(body AS BLOB))) FROM messages "
               "WHERE direction = 'in' AND sender IS NOT NULL GROUP BY sender")


def _to_v5(db):
    """Delivery receipts: the ones we owe for mailbox items we collected (:mod:`~p2pd.peer.storage.receipts`),
    and an index of our messages that wait in a mailbox, to count them and to find those whose deposit expired."""
    db.execute("""CREATE TABLE receipts (
                      sender TEXT NOT NULL,
                      id TEXT NOT NULL,
                      PRIMARY KEY (sender, id)) WITHOUT ROWID""")
    db.execute("CREATE INDEX messages_in_mailbox ON messages (updated_at) WHERE status = 'queued'")


def _to_v6(db):
    """The previews of incoming image offers (:mod:`~p2pd.peer.storage.previews`); ``n`` orders them by age."""
    db.execute("""CREATE TABLE previews (
                      n INTEGER PRIMARY KEY,
                      tid TEXT NOT NULL,
                      item INTEGER NOT NULL,
                      jpeg BLOB NOT NULL,
                      stored_at INTEGER NOT NULL,
                      UNIQUE (tid, item))""")


MIGRATIONS = (_to_v1, _to_v2, _to_v3, _to_v4, _to_v5, _to_v6)  # MIGRATIONS[n] takes the schema from version n to n + 1
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(db: sqlite3.Connection) -> int:
    """Bring *db* (opened with ``isolation_level=None``) to :data:`SCHEMA_VERSION`; returns the version found.

    Each step runs in its own transaction together with the version bump, so an interrupted upgrade resumes
    from the last completed step. A database from a newer p2pd is refused rather than misread.
    """
    found = db.execute("PRAGMA user_version").fetchone()[0]
    if found > SCHEMA_VERSION:
        raise StorageError(
            "the database has schema version %d but this p2pd only knows up to %d; upgrade p2pd"
            % (found, SCHEMA_VERSION)
        )
    for version in range(found, SCHEMA_VERSION):
        db.execute("BEGIN IMMEDIATE")
        try:
            MIGRATIONS[version](db)
            db.execute("PRAGMA user_version = %d" % (version + 1))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    return found
