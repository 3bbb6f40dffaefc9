"""The store's connection: the file, its pragmas, the schema, and the write group that :meth:`Database.commit`
makes durable.

Writes are grouped. Each write joins the transaction that is currently open (opening one if needed) and is
visible to later reads at once, but only :meth:`Database.commit` makes it durable (see :mod:`p2pd.peer.storage`
for why, and for what a crash or a power loss costs).

The parts of the store (:mod:`~p2pd.peer.storage.messages`, :mod:`~p2pd.peer.storage.outbox`, ...) are
subclasses of :class:`Database` that share its one connection, ``_db``; :class:`~p2pd.peer.storage.Storage`
combines them. A part that caches what the database holds overrides :meth:`Database._reset_caches` (called on
open and when a group is rolled back) and, if it holds writes back until the commit,
:meth:`Database._before_commit`; both call ``super()``.
"""

import functools
import os
import sqlite3

from p2pd.peer.storage import schema
from p2pd.peer.storage.errors import StorageError

DB_FILENAME = "p2pd.sqlite3"

WAL_LIMIT = 64 << 20  # bytes of WAL after which commit() checkpoints by itself


def db_path(data_dir: str) -> str:
    """Where the store of the daemon whose data lives in *data_dir* is kept."""
    return os.path.join(data_dir, DB_FILENAME)


def writes(method):
    """Run *method* inside the open write group; a database failure rolls the whole group back.

    Nothing in an uncommitted group has been acknowledged, so peers send those messages again; keeping a group
    that is half-applied would be worse than losing it.
    """

    @functools.wraps(method)
    def write(self, *args, **kwargs):
        if not self._db.in_transaction:
            self._begin()
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as e:
            self._abort()
            raise StorageError("the message store failed: %s" % (e,)) from e

    return write


class Database:
    """One SQLite connection in WAL mode with the schema up to date. Writes join the open transaction;
    :meth:`commit` makes them durable."""

    def __init__(self, path: str):
        """Open (creating with mode 0600) the database at *path* and bring its schema up to date.

        This is all the I/O it does: create or open the file (and tighten its mode), connect, set the pragmas
        (WAL), and run the missing migrations.
        """
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_mode & 0o077:
                os.fchmod(fd, 0o600)  # chat history is private, whoever created the file
        finally:
            os.close(fd)
        try:
            self._db = sqlite3.connect(path, isolation_level=None, cached_statements=64)
        except sqlite3.Error as e:
            raise StorageError("cannot open the message store %s: %s" % (path, e)) from e
        try:
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise StorageError("cannot use write-ahead logging for %s (journal mode %s)" % (path, mode))
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.execute("PRAGMA foreign_keys = OFF")
            self._db.execute("PRAGMA journal_size_limit = %d" % (32 << 20))  # trim the WAL after checkpoints
            # No automatic checkpoints in the reactor thread (each costs several fsyncs, milliseconds): the daemon
            # runs checkpoint() from a worker thread instead; commit() falls back to one if that falls behind.
            self._db.execute("PRAGMA wal_autocheckpoint = 0")
            schema.migrate(self._db)
        except sqlite3.Error as e:
            self._db.close()
            raise StorageError("cannot open the message store %s: %s" % (path, e)) from e
        except BaseException:
            self._db.close()
            raise
        self._reset_caches()
        self._closed = False
        self._path = path
        self._commits = 0

    # --- what the parts extend ---------------------------------------------------------------------------

    def _reset_caches(self):
        """Forget every cached view of the database (it is opened, or the open group was rolled back)."""

    def _before_commit(self):
        """Write what was held back for the commit, inside the open transaction."""

    # --- transactions --------------------------------------------------------------------------------------

    def _begin(self):
        self._db.execute("BEGIN IMMEDIATE")

    def _abort(self):
        self._reset_caches()
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    @property
    def pending(self) -> bool:
        """Whether there are writes that :meth:`commit` has not made durable yet."""
        return self._db.in_transaction

    def commit(self):
        """Make every write so far durable (against a crash of this process). Cheap if nothing is pending."""
        if not self._db.in_transaction:
            return
        try:
            self._before_commit()
            self._db.execute("COMMIT")
        except sqlite3.Error as e:
            self._abort()
            raise StorageError("the message store could not commit: %s" % (e,)) from e
        self._commits += 1
        if self._commits % 4096 == 0 and os.path.getsize(self._path + "-wal") > WAL_LIMIT:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")  # the background checkpoints fell behind

    def checkpoint(self):
        """Copy the WAL back into the database (PASSIVE: never blocks writers). Safe to call from a worker
        thread: it uses a connection of its own."""
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            db.close()

    def close(self):
        """Commit what is pending, checkpoint and close. Closing twice is harmless."""
        if self._closed:
            return
        try:
            self.commit()
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._closed = True
            self._db.close()
