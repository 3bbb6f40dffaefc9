"""The writer thread of a receive session: writes and verifies file bytes off the reactor thread."""

import errno
import os
import queue
import threading

from p2pd.core import filehash
from p2pd.peer.files.errors import LocalProblem, TransferError, write_error

ALLOCATE_STEP = 8 << 20  # a partial file's blocks are claimed this far ahead of the bytes written to it
FREE_MARGIN = 16 << 20  # bytes always left free on the inbox's file system (chat and the database need them)


class DiskWriter:
    """Writes and verifies the file bytes of one receive session, in a thread of its own.

    The reactor thread receives and decrypts; this consumer writes each chunk to the partial file and hashes it
    (both release the GIL), so the two overlap. It is the TCP transport's consumer: past :data:`HIGH` queued
    bytes the transport is paused (TCP then slows the sender), and resumed below :data:`LOW`. Results come
    back to the reactor thread through the :class:`~p2pd.peer.interfaces.IThreads` it is given:
    ``verified(index, length)``, ``ended(index)``, ``finished()``, ``failed(error)``, ``stopped()``. With
    :class:`~p2pd.peer.threads.InlineThreads` (unit tests) the work is done inline, with the same callbacks.

    Space is claimed as the bytes come, :data:`ALLOCATE_STEP` at a time (``posix_fallocate``: a full disk fails
    there, and the writes do not allocate blocks piece by piece), never past :data:`FREE_MARGIN` of free space;
    a file left unfinished is cut back to its verified bytes. So an offer that sends a header and hangs up
    leaves nothing behind but what it really sent, and a full inbox disk never starves the chat database."""

    HIGH = 16 << 20
    LOW = 4 << 20

    def __init__(self, threads, session, pool):
        self.threads = threads
        self.session = session
        self.pool = pool
        self.threaded = threads.threaded
        self.fd = None
        self.hasher = None
        self.digests = None
        self.index = None
        self.broken = False
        self.stopping = False
        self.pending = 0
        self.paused = False
        self.lock = threading.Lock()
        if self.threaded:
            self.queue = queue.SimpleQueue()
            self.thread = threads.start_thread(self._run, "p2pd-writer")

    def submit(self, op, *args, size=0):
        if not self.threaded:
            return self._do(op, args)
        with self.lock:
            self.pending += size
            pause = self.pending > self.HIGH and not self.paused
            if pause:
                self.paused = True
        self.queue.put((op, args, size))
        if pause:
            self.session.pause()

    def _run(self):
        while True:
            op, args, size = self.queue.get()
            try:
                self._do(op, args)
            finally:
                if size:
                    with self.lock:
                        self.pending -= size
                        resume = self.paused and self.pending < self.LOW
                        if resume:
                            self.paused = False
                    if resume:
                        self.threads.call_in_reactor(self.session.resume)
            if op == "stop":
                return

    def _report(self, name, *args):
        callback = getattr(self.session, name)
        if self.threaded:
            self.threads.call_in_reactor(callback, *args)
        else:
            callback(*args)

    def _do(self, op, args):
        if self.broken and op != "stop":
            if op == "data":
                self.pool.give(args[0])
            return
        try:
            getattr(self, "_" + op)(*args)
        except TransferError as e:
            self.broken = True
            self._close()
            self._report("failed", e, True)
        except OSError as e:
            self.broken = True
            self._close()
            self._report("failed", write_error(e), False)

    def _open(self, index, fd, hasher, digests):
        self.index, self.fd, self.hasher, self.digests = index, fd, hasher, digests
        self.pos = self.verified_to = os.lseek(fd, 0, os.SEEK_CUR)
        self.allocated_to = os.fstat(fd).st_size

    def _allocate(self, end):
        """Claim the blocks up to *end* (and ALLOCATE_STEP beyond, within the file), keeping FREE_MARGIN free."""
        if end <= self.allocated_to:
            return
        upto = min(self.hasher.size, max(end, self.allocated_to + ALLOCATE_STEP))
        st = os.fstatvfs(self.fd)
        if st.f_bavail * st.f_frsize < upto - self.allocated_to + FREE_MARGIN:
            raise LocalProblem("the inbox's disk is almost full (less than %d MiB would be left free)"
                               % (FREE_MARGIN >> 20), code="disk_full")
        try:
            os.posix_fallocate(self.fd, self.allocated_to, upto - self.allocated_to)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):  # a file system without it
                raise
        self.allocated_to = upto

    def stop(self):
        """No more work: the thread closes the file and ends after what is queued (once, however called)."""
        if not self.stopping:
            self.stopping = True
            self.submit("stop")

    def cancel(self):
        """Drop what is still queued (the session is over); the thread stops after the chunk in hand."""
        self.broken = True
        self.stop()

    def _data(self, chunk):
        try:
            self._allocate(self.pos + len(chunk))
            written = 0
            view = memoryview(chunk)
            while written < len(chunk):
                written += os.write(self.fd, view[written:])
            first = self.hasher.index
            verified = None
            for k, digest in enumerate(self.hasher.update(chunk)):
                n = first + k
                if digest != self.digests[n * filehash.DIGEST:(n + 1) * filehash.DIGEST]:
                    raise TransferError("hash mismatch in chunk %d: the bytes are not those of the file offered; "
                                        "nothing was kept" % n, code="hash_mismatch")
                verified = min((n + 1) * self.hasher.chunk, self.hasher.size)
            self.pos += written
            if verified is not None:
                self.verified_to = verified
        finally:
            self.pool.give(chunk)  # written and hashed (or failed): the buffer can take the next record
        if verified is not None:
            self._report("verified", self.index, verified)

    def _end(self, index):
        self._close()
        self._report("ended", index)

    def _finish(self):
        self._report("finished")

    def _stop(self):
        self._close()
        self._report("stopped")

    def _close(self):
        if self.fd is not None:
            if self.verified_to < self.hasher.size:  # unfinished: keep only what was verified, free the rest
                try:
                    os.ftruncate(self.fd, self.verified_to)
                except OSError:
                    pass
            os.close(self.fd)
            self.fd = None
