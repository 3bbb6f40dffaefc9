"""What both roles do in their data dirs. The lock they take first: an exclusive, non-blocking ``flock`` on a file in the data dir that
holds the owner's pid, kept for the process's life, so a second process on the same data dir refuses to start.
The fd is close-on-exec (children such as redis-server never inherit it); closing it drops the lock."""

import fcntl
import json
import os

from p2pd.errors import DataDirInUse


class DataDirLock:
    """``DataDirLock(data_dir, "peer.lock", "p2pd daemon")``: *what* names the owner in the refusal."""

    def __init__(self, data_dir: str, filename: str, what: str):
        self.data_dir = data_dir
        self.path = os.path.join(data_dir, filename)
        self.what = what
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock and write our pid into it; :class:`DataDirInUse` (naming the holder) if it is taken."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise DataDirInUse("data dir %s is in use by another %s (pid %s)" % (self.data_dir, self.what, holder)) \
                from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, b"%d\n" % os.getpid(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # the file stays, harmlessly
            self.fd = None


def write_info(path: str, info: dict) -> None:
    """Write *info* as JSON to *path* atomically (a reader sees the old file or the new one, never half of one):
    the ``peer.json`` / ``registry.json`` that say where a running daemon listens."""
    with open(path + ".tmp", "w") as f:
        json.dump(info, f)
    os.replace(path + ".tmp", path)
