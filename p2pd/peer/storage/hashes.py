"""The hash cache of files this peer has offered: a file's root hash and chunk digests, kept while the file
still has the device, inode, size and mtime it had when it was hashed."""

from p2pd.peer.storage.db import Database, writes


class HashCache(Database):
    """The ``file_hashes`` table."""

    def cached_hash(self, path: str, st) -> tuple | None:
        """``(root, digests)`` stored for *path* if it still has the device, inode, size and mtime of *st*."""
        row = self._db.execute("SELECT root, digests FROM file_hashes WHERE path = ? AND dev = ? AND ino = ? "
                               "AND size = ? AND mtime_ns = ?",
                               (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)).fetchone()
        return None if row is None else (row[0], bytes(row[1]))

    @writes
    def put_hash(self, path: str, st, root: str, digests: bytes):
        """Remember *root* and *digests* for *path* as it is described by *st* (an ``os.stat_result``)."""
        self._db.execute("INSERT OR REPLACE INTO file_hashes VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, root, digests))
