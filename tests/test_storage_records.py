"""The store's small tables: settings (p2pd.peer.storage.settings), file transfer records (.transfers) and
the hash cache of offered files (.hashes), the previews of image offers (.previews)."""

import os

import pytest

from p2pd.peer.storage import InvalidMessage, Storage, db_path
from p2pd.peer.storage.hashes import HashCache
from p2pd.peer.storage.settings import Settings
from p2pd.peer.storage.transfers import TransferRecords

NOW = 1_700_000_000_000


@pytest.fixture
def path(tmp_path):
    return db_path(str(tmp_path))


# --- settings -----------------------------------------------------------------------------------------------


def test_settings(path):
    """put/get keep small JSON-able values across restarts; a missing key gives the default."""
    s = Storage(path)
    assert s.get("missing") is None and s.get("missing", 5) == 5
    s.put("auto_accept", {"bob": ["image/png"], "max": 10_000_000})
    s.put("auto_accept", {"bob": ["image/png"], "max": 20_000_000})
    s.put("none", None)
    s.close()
    s = Storage(path)
    assert s.get("auto_accept") == {"bob": ["image/png"], "max": 20_000_000}
    assert s.get("none", "default") is None
    with pytest.raises(ValueError):
        s.put("bad", object())
    with pytest.raises(ValueError):
        s.put("nan", float("nan"))
    s.close()


# --- file transfers and the hash cache ----------------------------------------------------------------


def test_transfer_records_and_hash_cache(path):
    s = Storage(path)
    rec = {"tid": "a" * 32, "direction": "in", "peer": "bob", "status": "active", "fingerprint": "f" * 64,
           "have": [0]}
    s.put_transfer(rec, NOW)
    s.put_transfer(dict(rec, tid="b" * 32, status="done"), NOW + 1)
    s.commit()
    assert s.get_transfer("a" * 32) == rec
    assert [t["tid"] for t in s.transfers()] == ["b" * 32, "a" * 32]
    assert [t["tid"] for t in s.transfers(statuses=("done",))] == ["b" * 32]
    assert s.find_transfer("bob", "in", "f" * 64, ("active",))["tid"] == "a" * 32
    assert s.find_transfer("bob", "out", "f" * 64, ("active",)) is None
    st = os.stat(path)
    s.put_hash("/x", st, "r" * 64, b"d" * 32)
    assert s.cached_hash("/x", st) == ("r" * 64, b"d" * 32)
    changed = os.stat_result((st.st_mode, st.st_ino, st.st_dev, st.st_nlink, st.st_uid, st.st_gid, st.st_size + 1,
                              st.st_atime, st.st_mtime, st.st_ctime))
    assert s.cached_hash("/x", changed) is None
    s.close()


# --- the parts alone ----------------------------------------------------------------------------------------


def test_each_part_opens_the_same_file_alone(path):
    """Every part of the store is a Database of its own over the same file and schema: what Storage wrote, a
    part opened alone reads (and the other way round)."""
    s = Storage(path, name="alice")
    s.put("pin:bob", "key")
    s.put_transfer({"tid": "t" * 32, "direction": "out", "peer": "bob", "status": "done", "fingerprint": "f"}, NOW)
    st = os.stat(path)
    s.put_hash("/x", st, "r", b"d")
    s.close()
    part = Settings(path)
    assert part.get("pin:bob") == "key"
    part.put("pin:carol", "other")
    part.close()
    part = TransferRecords(path)
    assert [t["tid"] for t in part.transfers()] == ["t" * 32]
    part.close()
    part = HashCache(path)
    assert part.cached_hash("/x", st) == ("r", b"d")
    part.close()
    s = Storage(path)
    assert s.settings_with_prefix("pin:") == [("pin:bob", "key"), ("pin:carol", "other")]
    s.close()


def test_quarantine_keeps_the_newest_items_once_each(tmp_path):
    s = Storage(str(tmp_path / "q.sqlite3"))
    assert s.add_quarantined("a", "bob", "forged", "PAYLOAD", 1) is True
    assert s.add_quarantined("a", "bob", "forged", "PAYLOAD", 2) is False
    for i in range(5):
        s.add_quarantined("b%d" % i, None, "unreadable", None, 10 + i, keep=3)
    s.commit()
    assert [q["id"] for q in s.quarantined()] == ["b4", "b3", "b2"]
    assert s.quarantined(limit=1) == [{"id": "b4", "from": None, "reason": "unreadable", "received_at": 14}]
    assert s.quarantine_count() == 3


def test_previews_are_kept_per_transfer_and_file_and_only_the_newest(tmp_path):
    """A preview is replaced by a newer one for the same file; past *keep* the oldest go; a bad one is refused."""
    s = Storage(str(tmp_path / "p.sqlite3"))
    s.put_preview("a" * 32, 0, b"\xff\xd8\xffold", 1)
    s.put_preview("a" * 32, 0, b"\xff\xd8\xffnew", 2)
    s.put_preview("a" * 32, 1, b"\xff\xd8\xffsecond", 3)
    assert s.preview("a" * 32, 0) == b"\xff\xd8\xffnew" and s.preview("a" * 32, 1) == b"\xff\xd8\xffsecond"
    assert s.preview("a" * 32, 2) is None and s.preview("b" * 32, 0) is None
    for i in range(5):
        s.put_preview("%032x" % i, 0, b"x%d" % i, 10 + i, keep=3)
    s.commit()
    assert [s.preview("%032x" % i, 0) for i in range(5)] == [None, None, b"x2", b"x3", b"x4"]
    assert s.preview("a" * 32, 0) is None
    for bad in (b"", b"x" * (16 << 10) + b"x", "text"):
        with pytest.raises(InvalidMessage):
            s.put_preview("c" * 32, 0, bad, 20)
    s.close()
