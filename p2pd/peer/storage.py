"""The peer daemon's embedded store: chat history, the outbox, sequence counters and a few settings.

One SQLite file, ``<data_dir>/p2pd.sqlite3`` (mode 0600; SQLite gives its ``-wal`` and ``-shm`` files the same
mode), used synchronously from the reactor thread through the stdlib :mod:`sqlite3`. Every call is a handful
of indexed statements, so none of them blocks the reactor for long.

Writes are grouped. Each write joins the transaction that is currently open (opening one if needed) and is
visible to later reads at once, but only :meth:`Storage.commit` makes it durable. The daemon commits once per
reactor turn and sends acknowledgements only after that commit, so an acknowledged message is always on disk
and a message lost in a crash was never acknowledged (its sender still has it in its outbox and sends it
again; :meth:`Storage.add_incoming` drops the copy if the first one did arrive). Grouping is what lets one
process store 10,000+ messages per second in each direction: a commit costs a few ``write()`` calls, however
many messages it holds.

Durability: WAL journal with ``synchronous=NORMAL``. A commit appends its pages to the WAL with ``write()`` and
does not wait for ``fsync``; the WAL is fsynced when it is checkpointed into the database. Hence:

- a crash or SIGKILL of the daemon loses nothing that was committed: the written pages belong to the kernel,
  and the next open replays the WAL. What was written but not committed (including pages SQLite spilled to
  the WAL mid-transaction) carries no commit mark and is ignored, so it is absent, never half there;
- a power loss or kernel crash can lose the last moments of commits (whatever the kernel had not yet written
  back), but the database stays consistent: WAL frames are checksummed and a torn tail is discarded.

That is the right trade here. Process death (bugs, OOM killer, ``kill -9``, upgrades) is by far the common
failure, and it costs nothing. ``synchronous=FULL`` would fsync at every commit, i.e. stall the reactor for
one disk flush (milliseconds on an SSD, tens of them on a VM or a spinning disk) on every turn, to protect
against a power cut losing the last second of chat. Switching is one pragma should a deployment want it.

Foreign keys are off (the outbox points at history by rowid and this module keeps the two in step inside one
transaction). Statements are fixed strings, so :mod:`sqlite3` prepares each once and reuses it from its
statement cache.

The schema is versioned with ``PRAGMA user_version``: :data:`MIGRATIONS` holds one function per version step,
and :func:`migrate` applies the missing ones, each in its own transaction. A later feature adds its tables by
appending a function, never by editing an old one.

Messages are plain dicts with the keys of :data:`MESSAGE_FIELDS`:

``id`` (32 hex digits), ``conversation`` (the peer name for one-to-one chat, ``"#" + canonical room`` for a
room), ``sender``, ``recipient`` (for outgoing messages the peer it is delivered to; for incoming ones what the
sender said, None for room messages), ``room`` (display name or None), ``seq``, ``ts`` (ms, sender's clock),
``body``, ``direction`` (``"in"``/``"out"``), ``status``, ``via``, ``received_at`` (ms, when stored here),
``mailbox_id``, ``reason`` (why it failed), ``updated_at`` (ms, last status change) and ``rowid`` (for paging).

Outgoing status: ``pending`` (in the outbox) -> ``delivered`` (acknowledged by the recipient, ``via`` "direct"
or "mailbox"), or ``queued`` (deposited in the registry mailbox) -> ``delivered``, or ``failed``. Incoming
messages are ``received``.
"""

import json
import os
import re
import sqlite3

from p2pd.core.names import canonical_room
from p2pd.errors import BadRequest, InvalidName, P2PDError

DB_FILENAME = "p2pd.sqlite3"

MESSAGE_FIELDS = (
    "id", "conversation", "sender", "recipient", "room", "seq", "ts", "body", "direction", "status", "via",
    "received_at", "mailbox_id", "reason", "updated_at", "rowid",
)
_COLUMNS = ", ".join("m." + field for field in MESSAGE_FIELDS)
_ID_RE = re.compile(r"[0-9a-f]{32}")


WAL_LIMIT = 64 << 20  # bytes of WAL after which commit() checkpoints by itself

class StorageError(P2PDError):
    """The database failed (disk full, I/O error, locked by another process, newer schema)."""

    code = "storage_failed"
    status = 500


class InvalidMessage(BadRequest, ValueError):
    """A value that cannot be stored as given: a missing or mistyped field, or text with a lone surrogate."""

    code = "invalid_message"


def db_path(data_dir: str) -> str:
    """Where the store of the daemon whose data lives in *data_dir* is kept."""
    return os.path.join(data_dir, DB_FILENAME)


# --- schema ------------------------------------------------------------------------------------------------


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


MIGRATIONS = (_to_v1, _to_v2)  # MIGRATIONS[n] takes the schema from version n to n + 1
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


# --- validation ----------------------------------------------------------------------------------------------


def _text(field: str, value, optional: bool = False):
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise InvalidMessage("%s must be a string, not %s" % (field, type(value).__name__))
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidMessage(
            "%s contains a lone surrogate (U+%04X at index %d): only valid Unicode text can be stored"
            % (field, ord(value[e.start]), e.start)
        ) from None
    return value


def _integer(field: str, value, minimum=None) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidMessage("%s must be an integer, not %s" % (field, type(value).__name__))
    if minimum is not None and value < minimum:
        raise InvalidMessage("%s must be at least %d, not %d" % (field, minimum, value))
    return value


def _room_conversation(room: str) -> str:
    try:
        return "#" + canonical_room(room)
    except InvalidName as e:
        raise InvalidMessage(e.message) from None


def _limit(limit) -> int:
    return _integer("limit", limit, minimum=0)


# --- statements ----------------------------------------------------------------------------------------------

_INSERT_MESSAGE = (
    "INSERT INTO messages (id, conversation, sender, recipient, room, seq, ts, body, direction, status, via,"
    " received_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_INCOMING = _INSERT_MESSAGE.replace("INSERT", "INSERT OR IGNORE", 1)
_NEXT_SEQ = (
    "INSERT INTO seq_out VALUES (?, 1) ON CONFLICT (recipient) DO UPDATE SET last = last + 1 RETURNING last"
)
_SEEN_SEQ = (
    "INSERT INTO seq_in VALUES (?, ?, ?)"
    " ON CONFLICT (sender, conversation) DO UPDATE SET last = max(last, excluded.last)"
)
_COUNT_MESSAGES = (
    "INSERT INTO conversations VALUES (?, ?, ?, ?) ON CONFLICT (conversation) DO UPDATE"
    " SET count = count + excluded.count, last_ts = excluded.last_ts, last_rowid = excluded.last_rowid"
)
_INSERT_OUTBOX = "INSERT INTO outbox VALUES (?, ?, ?)"
_DELETE_OUTBOX = "DELETE FROM outbox WHERE recipient = ? AND seq = ?"
# Finds and settles the message in one statement; its outbox row (there is one only if it was pending) goes next.
_SETTLE = (
    "UPDATE messages SET status = ?, via = coalesce(?, via), mailbox_id = coalesce(?, mailbox_id),"
    " reason = ?, updated_at = ? WHERE id = ? AND direction = 'out' AND status IN (%s)"
    " RETURNING recipient, seq"
)
_OUTBOX_ALL = (
    "SELECT %s FROM outbox o JOIN messages m ON m.rowid = o.message ORDER BY o.recipient, o.seq LIMIT ?"
    % _COLUMNS
)
_OUTBOX_ONE = (
    "SELECT %s FROM outbox o JOIN messages m ON m.rowid = o.message WHERE o.recipient = ? ORDER BY o.seq LIMIT ?"
    % _COLUMNS
)
# DISTINCT would walk every outbox row; this hops from one recipient to the next through the primary key.
_OUTBOX_RECIPIENTS = (
    "WITH RECURSIVE r(name) AS (SELECT min(recipient) FROM outbox"
    " UNION ALL SELECT (SELECT min(recipient) FROM outbox WHERE recipient > r.name) FROM r WHERE r.name IS NOT NULL)"
    " SELECT name FROM r WHERE name IS NOT NULL"
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
_HISTORY = {key: sql % _COLUMNS for key, sql in _HISTORY.items()}


_SETTLE_FOR = {
    allowed: _SETTLE % ", ".join("'%s'" % status for status in allowed)
    for allowed in (("pending", "queued", "failed"), ("pending",), ("pending", "queued"))
}


def _message(row) -> dict:
    return dict(zip(MESSAGE_FIELDS, row))


def _writes(method):
    """Run *method* inside the open write group; a database failure rolls the whole group back.

    Nothing in an uncommitted group has been acknowledged, so peers send those messages again; keeping a group
    that is half-applied would be worse than losing it.
    """

    def write(self, *args, **kwargs):
        if not self._db.in_transaction:
            self._begin()
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as e:
            self._abort()
            raise StorageError("the message store failed: %s" % (e,)) from e

    write.__name__ = method.__name__
    write.__qualname__ = method.__qualname__
    write.__doc__ = method.__doc__
    return write


class Storage:
    """The daemon's store. Writes join the open transaction; :meth:`commit` makes them durable."""

    def __init__(self, path: str, name: str | None = None):
        """Open (creating with mode 0600) the database at *path* and bring its schema up to date.

        *name* is this peer's own name, recorded as the sender of outgoing messages.
        """
        self.path = path
        self.name = name
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
            migrate(self._db)
        except sqlite3.Error as e:
            self._db.close()
            raise StorageError("cannot open the message store %s: %s" % (path, e)) from e
        except BaseException:
            self._db.close()
            raise
        self._outbox_count = None  # cached count(*) of the outbox; None = ask the database
        self._last_seq = {}  # (sender, conversation) -> highest seq received, as the database (+ open group) has it
        self._counts = {}  # conversation -> [messages, last ts, last rowid] added in the open write group
        self._closed = False
        self._path = path
        self._commits = 0

    # --- transactions --------------------------------------------------------------------------------------

    def _begin(self):
        self._db.execute("BEGIN IMMEDIATE")

    def _abort(self):
        self._counts.clear()
        self._last_seq.clear()
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
        self._outbox_count = None

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

    @property
    def pending(self) -> bool:
        """Whether there are writes that :meth:`commit` has not made durable yet."""
        return self._db.in_transaction

    def commit(self):
        """Make every write so far durable (against a crash of this process). Cheap if nothing is pending."""
        if not self._db.in_transaction:
            return
        try:
            self._write_counts()
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

    # --- outgoing ------------------------------------------------------------------------------------------

    @_writes
    def add_outgoing(self, recipient: str, body: str, now_ms: int, room: str | None = None,
                     conversation: str | None = None) -> dict:
        """Store a new message for *recipient* as ``pending``, in history and in the outbox, and return it.

        Its ``seq`` is the next number of the per-recipient counter (1, 2, ...; it survives restarts). The
        conversation is *conversation* if given, else ``"#" + canonical room`` for a room message, else the
        recipient.
        """
        _text("recipient", recipient)
        _text("body", body)
        _integer("now_ms", now_ms)
        _text("room", room, optional=True)
        if conversation is None:
            conversation = recipient if room is None else _room_conversation(room)
        else:
            _text("conversation", conversation)
        db = self._db
        seq = db.execute(_NEXT_SEQ, (recipient,)).fetchone()[0]
        # 12 hex digits of time, then 80 random bits: still unguessable and unique, but consecutive messages sit
        # side by side in the id index (and in the recipient's), so a commit rewrites a few of its pages, not one
        # page per message.
        msg_id = "%012x%s" % (now_ms & 0xFFFFFFFFFFFF, os.urandom(10).hex())
        rowid = db.execute(_INSERT_MESSAGE, (
            msg_id, conversation, self.name, recipient, room, seq, now_ms, body, "out", "pending", None,
            now_ms, now_ms,
        )).lastrowid
        db.execute(_INSERT_OUTBOX, (recipient, seq, rowid))
        self._count(conversation, now_ms, rowid)
        if self._outbox_count is not None:
            self._outbox_count += 1
        return {
            "id": msg_id, "conversation": conversation, "sender": self.name, "recipient": recipient,
            "room": room, "seq": seq, "ts": now_ms, "body": body, "direction": "out", "status": "pending",
            "via": None, "received_at": now_ms, "mailbox_id": None, "reason": None, "updated_at": now_ms,
            "rowid": rowid,
        }

    @_writes
    def add_room_post(self, room: str, body: str, recipients, now_ms: int) -> tuple:
        """Store a message to *room*: ``(post, copies)``. The post is what our history shows, once, in
        ``"#" + canonical room`` (status ``sent``, in no outbox); each of *recipients* gets a copy of its own
        (own id, the recipient's next seq) in the outbox, kept in the hidden conversation ``"~#" + room``, so
        every member's delivery is tracked, retried and sealed into the mailbox like a one-to-one message."""
        _text("body", body)
        _integer("now_ms", now_ms)
        conversation = _room_conversation(room)
        msg_id = "%012x%s" % (now_ms & 0xFFFFFFFFFFFF, os.urandom(10).hex())
        rowid = self._db.execute(_INSERT_MESSAGE, (
            msg_id, conversation, self.name, None, room, 0, now_ms, body, "out", "sent", None, now_ms, now_ms,
        )).lastrowid
        self._count(conversation, now_ms, rowid)
        post = {"id": msg_id, "conversation": conversation, "sender": self.name, "recipient": None, "room": room,
                "seq": 0, "ts": now_ms, "body": body, "direction": "out", "status": "sent", "via": None,
                "received_at": now_ms, "mailbox_id": None, "reason": None, "updated_at": now_ms, "rowid": rowid}
        copies = [self.add_outgoing(r, body, now_ms, room=room, conversation="~" + conversation)
                  for r in recipients]
        return post, copies

    def outbox(self, recipient: str | None = None, limit: int = 1000) -> list[dict]:
        """Undelivered outgoing messages in sending order: by seq for one recipient, else by recipient, seq."""
        if recipient is None:
            rows = self._db.execute(_OUTBOX_ALL, (_limit(limit),))
        else:
            rows = self._db.execute(_OUTBOX_ONE, (recipient, _limit(limit)))
        return [_message(row) for row in rows]

    def outbox_recipients(self) -> list[str]:
        """The recipients that have messages waiting in the outbox, sorted."""
        return [row[0] for row in self._db.execute(_OUTBOX_RECIPIENTS)]

    def outbox_count(self) -> int:
        """How many messages wait in the outbox."""
        if self._outbox_count is None:
            self._outbox_count = self._db.execute("SELECT count(*) FROM outbox").fetchone()[0]
        return self._outbox_count

    def _settle(self, msg_id, allowed, status, via, mailbox_id, reason, now_ms) -> bool:
        """Move an outgoing message whose status is in *allowed* to *status* and out of the outbox."""
        _text("msg_id", msg_id)
        _integer("now_ms", now_ms)
        found = self._db.execute(_SETTLE_FOR[allowed], (status, via, mailbox_id, reason, now_ms, msg_id)).fetchone()
        if found is None:
            return False
        if "pending" in allowed and self._db.execute(_DELETE_OUTBOX, found).rowcount:
            if self._outbox_count is not None:
                self._outbox_count -= 1
        return True

    @_writes
    def mark_delivered(self, msg_id: str, via: str, now_ms: int) -> bool:
        """The recipient acknowledged the message (*via* "direct" or "mailbox"): ``delivered``, out of the outbox.

        True if this changed it (it was pending, queued in a mailbox or marked failed); False if the id is
        unknown or already delivered, so repeated acknowledgements are harmless.
        """
        _text("via", via)
        return self._settle(msg_id, ("pending", "queued", "failed"), "delivered", via, None, None, now_ms)

    @_writes
    def mark_deposited(self, msg_id: str, mailbox_id: str, now_ms: int) -> bool:
        """The registry mailbox took the message: ``queued`` via "mailbox", out of the outbox, *mailbox_id* kept.

        True if the message was pending, else False.
        """
        _text("mailbox_id", mailbox_id)
        return self._settle(msg_id, ("pending",), "queued", "mailbox", mailbox_id, None, now_ms)

    @_writes
    def mark_failed(self, msg_id: str, reason: str, now_ms: int) -> bool:
        """Give up on an undelivered message (e.g. its mailbox deposit expired unread): ``failed`` with *reason*.

        True if the message was pending or queued, else False.
        """
        _text("reason", reason)
        return self._settle(msg_id, ("pending", "queued"), "failed", None, None, reason, now_ms)

    # --- incoming ------------------------------------------------------------------------------------------

    @_writes
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
        _text("sender", sender)
        _integer("seq", seq, minimum=0)
        _integer("ts", ts)
        _text("body", body)
        _integer("now_ms", now_ms)
        room = _text("room", msg.get("room"), optional=True)
        recipient = _text("recipient", msg.get("recipient"), optional=True)
        via = _text("via", msg.get("via"), optional=True)
        conversation = sender if room is None else _room_conversation(room)
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
        row = self._db.execute("SELECT %s FROM messages m WHERE m.id = ?" % _COLUMNS, (msg_id,)).fetchone()
        return None if row is None else _message(row)

    def history(self, conversation: str | None = None, limit: int = 100,
                before_rowid: int | None = None) -> list[dict]:
        """The newest *limit* messages of *conversation* (None: of all), oldest first.

        For the page before, pass the first message's ``rowid`` as *before_rowid*.
        """
        params = [] if conversation is None else [conversation]
        if before_rowid is not None:
            params.append(_integer("before_rowid", before_rowid))
        params.append(_limit(limit))
        rows = self._db.execute(_HISTORY[conversation is not None, before_rowid is not None], params).fetchall()
        rows.reverse()
        return [_message(row) for row in rows]

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

    # --- settings --------------------------------------------------------------------------------------------

    def get(self, key: str, default=None):
        """The setting *key* as it was put, or *default*."""
        row = self._db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def settings_with_prefix(self, prefix: str) -> list:
        """``(key, value)`` of every setting whose key starts with *prefix*."""
        rows = self._db.execute("SELECT key, value FROM settings WHERE key >= ? AND key < ?",
                                (prefix, prefix + "\uffff"))
        return [(key, json.loads(value)) for key, value in rows]

    @_writes
    def put(self, key: str, value):
        """Set *key* to a JSON-able *value* (in the open transaction, like every write)."""
        _text("key", key)
        try:
            text = json.dumps(value, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError) as e:
            raise InvalidMessage("setting %r cannot be stored: %s" % (key, e)) from None
        self._db.execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", (key, text))

    # --- file transfers ------------------------------------------------------------------------------------

    @_writes
    def put_transfer(self, record: dict, now_ms: int):
        """Insert or replace the transfer *record* (a JSON-able dict with ``tid``, ``direction``, ``peer``,
        ``status`` and ``fingerprint``)."""
        self._db.execute("INSERT OR REPLACE INTO transfers VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (record["tid"], record["direction"], record["peer"], record["status"],
                          record["fingerprint"], now_ms, json.dumps(record, separators=(",", ":"))))

    def get_transfer(self, tid: str) -> dict | None:
        row = self._db.execute("SELECT record FROM transfers WHERE tid = ?", (tid,)).fetchone()
        return None if row is None else json.loads(row[0])

    def transfers(self, limit: int = 100, statuses=None) -> list[dict]:
        """The *limit* most recently updated transfers, newest first (only those in *statuses*, if given)."""
        if statuses:
            marks = ", ".join("?" * len(statuses))
            rows = self._db.execute("SELECT record FROM transfers WHERE status IN (%s) ORDER BY updated_at DESC "
                                    "LIMIT ?" % marks, (*statuses, _limit(limit)))
        else:
            rows = self._db.execute("SELECT record FROM transfers ORDER BY updated_at DESC LIMIT ?",
                                    (_limit(limit),))
        return [json.loads(row[0]) for row in rows]

    def find_transfer(self, peer: str, direction: str, fingerprint: str, statuses) -> dict | None:
        """The newest transfer of this offer (same peer, direction and content) in one of *statuses*."""
        marks = ", ".join("?" * len(statuses))
        row = self._db.execute(
            "SELECT record FROM transfers WHERE peer = ? AND direction = ? AND fingerprint = ? AND status IN (%s) "
            "ORDER BY updated_at DESC LIMIT 1" % marks, (peer, direction, fingerprint, *statuses)).fetchone()
        return None if row is None else json.loads(row[0])

    def cached_hash(self, path: str, st) -> tuple | None:
        """``(root, digests)`` stored for *path* if it still has the device, inode, size and mtime of *st*."""
        row = self._db.execute("SELECT root, digests FROM file_hashes WHERE path = ? AND dev = ? AND ino = ? "
                               "AND size = ? AND mtime_ns = ?",
                               (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)).fetchone()
        return None if row is None else (row[0], bytes(row[1]))

    @_writes
    def put_hash(self, path: str, st, root: str, digests: bytes):
        self._db.execute("INSERT OR REPLACE INTO file_hashes VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, root, digests))
