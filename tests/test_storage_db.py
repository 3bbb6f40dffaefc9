"""The store's connection (p2pd.peer.storage.db, .schema): the file and its mode, WAL, the write group and its
commit, crashes, checkpoints, the schema version and its migrations."""

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import threading

import pytest

from p2pd.peer.storage import DB_FILENAME, SCHEMA_VERSION, Storage, StorageError, db_path, schema
from p2pd.peer.storage import db as connection

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOW = 1_700_000_000_000


@pytest.fixture
def path(tmp_path):
    return db_path(str(tmp_path))


@pytest.fixture
def store(path):
    s = Storage(path, name="alice")
    yield s
    s.close()


def test_db_file_name_in_data_dir(tmp_path):
    """The store of a data dir is <data_dir>/p2pd.sqlite3."""
    assert db_path(str(tmp_path)) == str(tmp_path / "p2pd.sqlite3") and DB_FILENAME == "p2pd.sqlite3"


# --- transactions and durability ------------------------------------------------------------------------------


def test_writes_visible_before_commit(store):
    """Uncommitted writes are visible to reads at once; commit ends the pending group."""
    msg = store.add_outgoing("bob", "a", NOW)
    assert store.pending and store.has_message(msg["id"])
    store.commit()
    assert not store.pending
    store.commit()  # nothing pending: a no-op


def test_close_commits(path):
    """Closing commits what is pending; closing twice is harmless."""
    s = Storage(path)
    s.add_outgoing("bob", "a", NOW)
    s.close()
    s.close()
    s = Storage(path)
    assert s.outbox_count() == 1
    s.close()


def _kill_with(path, *commands):
    """Run a second process that applies writes to the store at *path* and dies (SIGKILL) without committing."""
    code = "import sys; from p2pd.peer.storage import Storage; s = Storage(sys.argv[1])\n" + "\n".join(commands)
    code += "\nimport os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    proc = subprocess.run([sys.executable, "-c", code, path], cwd=ROOT, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def test_uncommitted_write_lost_on_crash(path):
    """A write that was never committed is gone after the process dies; committed ones are kept."""
    _kill_with(path, "s.add_outgoing('bob', 'kept', 1); s.commit()", "s.add_outgoing('bob', 'lost', 2)")
    s = Storage(path)
    assert [m["body"] for m in s.history()] == ["kept"]
    assert s.add_outgoing("bob", "next", 3)["seq"] == 2
    s.close()


WRITER = r"""
import os, sys
from p2pd.peer.storage import Storage

path, n = sys.argv[1], int(sys.argv[2])
s = Storage(path, name="alice")
for i in range(n):
    msg = s.add_outgoing("bob", "committed %d" % i, 1000 + i)
    s.add_incoming({"id": "%032x" % i, "sender": "carol", "seq": i + 1, "ts": i, "body": "in %d" % i}, i)
    if i % 2 == 0:
        s.mark_delivered(msg["id"], "direct", 2000 + i)
    if i % 100 == 99:
        s.commit()
s.commit()
print("committed", os.path.getsize(path + "-wal"), flush=True)
i = 0
while True:  # keep writing and never commit, until killed
    s.add_outgoing("bob", "uncommitted %d " % i + "x" * 1000, 0)
    s.add_incoming({"id": "%032x" % (10**9 + i), "sender": "carol", "seq": 10**6 + i, "ts": 0, "body": "y"}, 0)
    i += 1
    if i == 4000:  # far more than SQLite's page cache: pages of this open transaction spill into the WAL
        print("spilled", os.path.getsize(path + "-wal"), flush=True)
"""


@pytest.mark.timeout(60)
def test_sigkill_keeps_exactly_the_committed(path):
    """A writer SIGKILLed right after committing N messages, in the middle of an uncommitted group whose pages
    already reached the WAL file, leaves exactly the N committed messages: no uncommitted one, none half there."""
    n = 1000
    proc = subprocess.Popen([sys.executable, "-c", WRITER, path, str(n)], cwd=ROOT, stdout=subprocess.PIPE)
    try:
        committed = proc.stdout.readline().split()
        spilled = proc.stdout.readline().split()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert committed[:1] == [b"committed"] and spilled[:1] == [b"spilled"]
    assert int(spilled[1]) > int(committed[1])  # uncommitted pages were on disk when it died

    check = sqlite3.connect(path)
    assert check.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    check.close()
    s = Storage(path)
    out = s.history("bob", limit=10 * n)
    assert [m["body"] for m in out] == ["committed %d" % i for i in range(n)]
    assert [m["seq"] for m in out] == list(range(1, n + 1))
    assert [m["status"] for m in out] == ["delivered", "pending"] * (n // 2)
    assert [m["seq"] for m in s.outbox("bob", limit=n)] == list(range(2, n + 1, 2))
    assert s.outbox_count() == n // 2
    assert [m["body"] for m in s.history("carol", limit=10 * n)] == ["in %d" % i for i in range(n)]
    assert s.last_seq("carol", "carol") == n
    assert s.conversations() == [
        {"conversation": "carol", "count": n, "last_ts": n - 1},
        {"conversation": "bob", "count": n, "last_ts": 1000 + n - 1},
    ]
    assert s.add_outgoing("bob", "after restart", 0)["seq"] == n + 1
    s.close()


# --- files and schema ---------------------------------------------------------------------------------------


def test_file_mode_0600(path):
    """The database, its WAL and its shared-memory index are created readable by the owner only, whatever the
    umask."""
    old = os.umask(0)
    try:
        s = Storage(path)
        s.add_outgoing("bob", "secret", NOW)
        s.commit()
        for name in (path, path + "-wal", path + "-shm"):
            assert stat.S_IMODE(os.stat(name).st_mode) == 0o600, name
        s.close()
    finally:
        os.umask(old)


def test_existing_file_tightened_to_0600(path):
    """A database file found with wider permissions is made private on open."""
    Storage(path).close()
    os.chmod(path, 0o644)
    Storage(path).close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_wal_and_schema_version(store, path):
    """The database is in WAL mode and records the schema version."""
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert check.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    check.close()


def test_newer_schema_refused(path):
    """A database written by a newer p2pd is refused with a clear message instead of being misread."""
    Storage(path).close()
    check = sqlite3.connect(path)
    check.execute("PRAGMA user_version = %d" % (SCHEMA_VERSION + 1))
    check.close()
    with pytest.raises(StorageError, match="upgrade p2pd"):
        Storage(path)


def test_migration_adds_tables(path, monkeypatch):
    """A later version appends a migration; an existing database gets it on open and keeps its data."""
    s = Storage(path)
    kept = s.add_outgoing("bob", "old", NOW)
    s.close()

    def to_next(db):
        db.execute("CREATE TABLE later_feature (id TEXT PRIMARY KEY, size INTEGER NOT NULL)")

    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS + (to_next,))
    monkeypatch.setattr(schema, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    s = Storage(path)
    assert s.get_message(kept["id"])["body"] == "old"
    s.close()
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION + 1,)
    assert check.execute("SELECT count(*) FROM later_feature").fetchone() == (0,)
    check.close()


def test_database_failure_rolls_back_the_group(path):
    """If the database itself fails mid-write, the whole uncommitted group is rolled back and StorageError
    raised: nothing half-applied can be committed later."""
    s = Storage(path)
    s.add_outgoing("bob", "committed", NOW)
    s.commit()
    s.add_outgoing("bob", "in the failing group", NOW)
    s._db.execute("DROP TABLE outbox")  # simulate the database failing under the next write
    with pytest.raises(StorageError, match="the message store failed"):
        s.add_outgoing("bob", "x", NOW)
    assert not s.pending
    assert [m["body"] for m in s.history()] == ["committed"] and s.outbox_count() == 1
    s.close()


def test_database_failure_forgets_every_cached_view(path):
    """A rolled-back group also drops what the parts cached of it: the highest seq received, the counts of
    the conversations and the outbox count all read as the database has them again."""
    s = Storage(path, name="alice")
    s.add_incoming({"id": "1" * 32, "sender": "bob", "seq": 5, "ts": NOW, "body": "kept"}, NOW)
    s.add_outgoing("carol", "kept", NOW)
    s.commit()
    assert (s.last_seq("bob", "bob"), s.outbox_count()) == (5, 1)
    s.add_incoming({"id": "2" * 32, "sender": "bob", "seq": 9, "ts": NOW + 1, "body": "lost"}, NOW)
    s.add_outgoing("carol", "lost", NOW)
    assert (s.last_seq("bob", "bob"), s.outbox_count()) == (9, 2)
    s._db.execute("DROP TABLE settings")  # the next write fails
    with pytest.raises(StorageError, match="the message store failed"):
        s.put("key", 1)
    assert (s.last_seq("bob", "bob"), s.outbox_count()) == (5, 1)
    assert s.conversations() == [{"conversation": "carol", "count": 1, "last_ts": NOW},
                                 {"conversation": "bob", "count": 1, "last_ts": NOW}]
    s.close()


def test_failed_commit_rolls_back_and_raises(path):
    """A commit the database refuses rolls the group back and raises StorageError; the store stays usable."""
    s = Storage(path, name="alice")
    s.add_outgoing("bob", "committed", NOW)
    s.commit()
    s.add_outgoing("bob", "refused", NOW)
    s._db.execute("DROP TABLE conversations")  # commit() writes the conversation counts first
    with pytest.raises(StorageError, match="the message store could not commit"):
        s.commit()
    assert not s.pending
    assert [m["body"] for m in s.history()] == ["committed"] and s.outbox_count() == 1
    s.close()


# --- checkpoints ------------------------------------------------------------------------------------------


def _fill(s, n=200):
    for i in range(n):
        s.add_outgoing("bob", "message %d " % i + "x" * 500, NOW + i)
    s.commit()


def test_writes_stay_in_the_wal_until_a_checkpoint(path):
    """Automatic checkpoints are off: committed pages wait in the WAL and the database file does not grow."""
    s = Storage(path)
    size = os.path.getsize(path)
    _fill(s)
    assert os.path.getsize(path) == size and os.path.getsize(path + "-wal") > 100_000
    s.close()


def test_checkpoint_from_a_worker_thread(path):
    """checkpoint() copies the WAL into the database from another thread (its own connection), while the
    reactor thread's connection stays usable."""
    s = Storage(path)
    size = os.path.getsize(path)
    _fill(s)
    errors = []
    worker = threading.Thread(target=lambda: errors.extend(_run(s.checkpoint)))
    worker.start()
    worker.join(10)
    assert errors == [] and os.path.getsize(path) > size + 100_000
    assert s.add_outgoing("bob", "after", NOW)["seq"] == 201
    s.close()


def _run(f):
    try:
        f()
    except Exception as e:  # noqa: BLE001 -- reported to the test's thread
        return [e]
    return []


def test_commit_checkpoints_when_the_wal_outgrows_its_limit(path, monkeypatch):
    """If the background checkpoints fall behind, every 4096th commit checkpoints by itself once the WAL is
    over WAL_LIMIT."""
    monkeypatch.setattr(connection, "WAL_LIMIT", 0)
    s = Storage(path)
    size = os.path.getsize(path)
    for i in range(4095):
        s.put("counter", i)
        s.commit()
    assert os.path.getsize(path) == size
    s.put("counter", 4095)
    s.commit()
    assert os.path.getsize(path) > size
    s.close()


def test_close_checkpoints_and_truncates_the_wal(path):
    """close() leaves everything in the database file and no WAL to replay (gone, or truncated to nothing if
    another connection still has the file open)."""
    s = Storage(path)
    other = sqlite3.connect(path)
    other.execute("SELECT count(*) FROM messages").fetchone()  # a reader that keeps the WAL open
    _fill(s)
    s.close()
    assert os.path.getsize(path + "-wal") == 0
    other.close()
    check = sqlite3.connect(path)
    assert check.execute("SELECT count(*) FROM messages").fetchone() == (200,)
    check.close()


def test_open_failure_is_a_storage_error(tmp_path):
    """A file that is not a database is refused with StorageError naming it."""
    path = db_path(str(tmp_path))
    with open(path, "wb") as f:
        f.write(b"not a database, " * 512)
    with pytest.raises(StorageError, match="cannot open the message store .*p2pd.sqlite3"):
        Storage(path)
