"""Safe landing in the inbox: partial files in ``INBOX/.p2pd-partial`` opened relative to a directory
descriptor (``O_NOFOLLOW``, created ``O_EXCL``, their space claimed as the bytes come), and ``link()`` into a name that exists nowhere
yet. No path component is ever followed through a symbolic link, and no file is ever replaced."""

import errno
import os
import stat

from p2pd.core import filenames
from p2pd.peer.files.engine import part_resume
from p2pd.peer.files.errors import LocalProblem, TransferError

PARTIAL_DIR = ".p2pd-partial"


class Inbox:
    def __init__(self, path):
        self.path = path

    def create(self):
        """Make the inbox if it is missing (at start, not when built)."""
        os.makedirs(self.path, mode=0o700, exist_ok=True)

    def free_space(self):
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def inbox_fd(self):
        try:
            return os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise LocalProblem("cannot use the inbox %s: %s" % (self.path, e.strerror)) from None

    def partial_fd(self):
        inbox_fd = self.inbox_fd()
        try:
            try:
                os.mkdir(PARTIAL_DIR, 0o700, dir_fd=inbox_fd)
            except FileExistsError:
                pass
            return os.open(PARTIAL_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=inbox_fd)
        except OSError as e:
            raise LocalProblem("cannot use %s/%s: %s" % (self.path, PARTIAL_DIR, e.strerror)) from None
        finally:
            os.close(inbox_fd)

    def open_part(self, name, journaled, size):
        """``(fd, have)``: the partial file *name* of a file of *size* bytes, positioned where it resumes
        (*journaled* verified bytes, or fewer). Its space is claimed as the bytes come (the disk writer does)."""
        dfd = self.partial_fd()
        try:
            have = journaled
            flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                fd = os.open(name, flags, dir_fd=dfd)
            except FileNotFoundError:
                fd = os.open(name, flags | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=dfd)
                have = 0
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                raise LocalProblem("partial file %s is not a regular file" % name)
            if st.st_size != size:
                have = part_resume(st.st_size, have, size)
            if st.st_size != have:  # what was not verified goes: its blocks are claimed again as bytes come
                os.ftruncate(fd, have)
            os.lseek(fd, have, os.SEEK_SET)
            return fd, have
        finally:
            os.close(dfd)

    def remove_part(self, name):
        dfd = self.partial_fd()
        try:
            os.unlink(name, dir_fd=dfd)
        except FileNotFoundError:
            pass
        finally:
            os.close(dfd)

    def choose_tops(self, landings, taken):
        """Top-level names in the inbox for files landing at *landings*, each one that neither the inbox nor
        *taken* (casefolded names other transfers will use) has."""
        taken = set(taken)
        tops = {}
        for landing in landings:
            top = landing.split("/", 1)[0]
            if top in tops:
                continue
            n = 0
            candidate = top
            while candidate.casefold() in taken or os.path.lexists(os.path.join(self.path, candidate)):
                n += 1
                candidate = filenames.numbered(top, n)
            taken.add(candidate.casefold())
            tops[top] = candidate
        return tops

    def open_landed(self, saved):
        """A binary file open on the landed regular file *saved* (inbox-relative), no path component followed
        through a symbolic link (OSError otherwise)."""
        components = saved.split("/")
        dfd = self.inbox_fd()
        try:
            for name in components[:-1]:
                nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
                os.close(dfd)
                dfd = nfd
            fd = os.open(components[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
        finally:
            os.close(dfd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.EINVAL, "not a regular file")
        return os.fdopen(fd, "rb")

    def land(self, part, landing, tops):
        """Link the partial file *part* to its place in the inbox; the path actually used (inbox-relative)."""
        components = landing.split("/")
        components[0] = tops.get(components[0], components[0])
        dfd = self.inbox_fd()
        pfd = self.partial_fd()
        try:
            for name in components[:-1]:
                try:
                    os.mkdir(name, 0o755, dir_fd=dfd)
                except FileExistsError:
                    pass
                try:
                    nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
                except OSError as e:
                    raise TransferError("cannot create the folder %s in the inbox: %s" % (name, e.strerror),
                                        code="write_failed") from None
                os.close(dfd)
                dfd = nfd
            base = components[-1]
            n = 0
            while True:
                name = base if n == 0 else filenames.numbered(base, n)
                try:
                    os.link(part, name, src_dir_fd=pfd, dst_dir_fd=dfd, follow_symlinks=False)
                    break
                except FileExistsError:
                    n += 1
            os.unlink(part, dir_fd=pfd)
            components[-1] = name
            return "/".join(components)
        finally:
            os.close(dfd)
            os.close(pfd)
