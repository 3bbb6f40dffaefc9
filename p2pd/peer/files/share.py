"""The ``--share`` folder: what ``ls`` lists and ``get`` may take, resolved component by component inside it,
no symbolic link followed anywhere."""

import os
import stat

from p2pd.core import filenames, wire
from p2pd.errors import NotFound
from p2pd.peer.files.errors import TransferError

MAX_LISTING = 1000


class Share:
    def __init__(self, path, name):
        self.path = path  # None: we share nothing
        self.name = name  # ours, for the messages

    def open(self, path):
        """An fd of *path* inside the share (a directory fd for ""), no symbolic link followed anywhere."""
        if self.path is None:
            raise TransferError("%s shares no folder" % self.name, code="no_share")
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        if not path:
            return fd
        try:
            components = filenames.check_relpath(path)
        except filenames.BadFileName:
            os.close(fd)
            raise NotFound("%s is not in %s's share" % (path, self.name)) from None
        try:
            for name in components:
                nfd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=fd)
                os.close(fd)
                fd = nfd
        except OSError:
            os.close(fd)
            raise NotFound("%s is not in %s's share" % (path, self.name)) from None
        return fd

    def listing(self, path, rid):
        """The ``listing`` frame answering ``ls`` *path* (at most :data:`MAX_LISTING` entries, and one line)."""
        fd = self.open(path)
        try:
            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                raise TransferError("%s is a file, not a folder" % path, code="not_a_folder")
            items = []
            with os.scandir(fd) as entries:
                for entry in sorted(entries, key=lambda e: e.name):
                    if filenames.is_hidden_or_unsafe(entry.name) or entry.is_symlink():
                        continue
                    st = entry.stat(follow_symlinks=False)
                    if stat.S_ISDIR(st.st_mode):
                        items.append({"name": entry.name, "type": "dir"})
                    elif stat.S_ISREG(st.st_mode):
                        items.append({"name": entry.name, "type": "file", "size": st.st_size})
        finally:
            os.close(fd)
        listing = {"t": "listing", "rid": rid, "items": items[:MAX_LISTING]}
        if len(items) > MAX_LISTING:
            listing["truncated"] = True
        while len(wire.encode(listing)) >= wire.MAX_LINE:
            listing["items"] = listing["items"][:len(listing["items"]) // 2]
            listing["truncated"] = True
        return listing

    def local_path(self, path):
        """The local path of the file or folder *path* that ``get`` asks for (NotFound if it is neither)."""
        fd = self.open(path)
        try:
            mode = os.fstat(fd).st_mode
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                raise NotFound("%s is not in %s's share" % (path, self.name))
        finally:
            os.close(fd)
        # The path was checked component by component without following links; walking it again by name is
        # safe because collect() and the sender re-check every entry (links and specials are skipped).
        return os.path.join(self.path, *filenames.check_relpath(path))
