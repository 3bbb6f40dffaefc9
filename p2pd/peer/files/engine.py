"""The rules of a file transfer's data stream, sans-IO: plain objects that take what arrived (records, byte
counts, file sizes) and say what is next or raise what is wrong. The sessions do the I/O around them.

- :class:`SendPlan`: what a sender sends next (open a file at the offset the receiver verified, read a chunk,
  end the file, finish the stream).
- :class:`ReceiveRules`: what a receiver accepts (files in order, each once; a hash list that matches the
  offer; no byte beyond the declared size; an end only when every byte came; a finish only when every file
  landed).
- :func:`check_have` (the offsets an ``accept`` answers with) and :func:`part_resume` (where a partial file
  resumes after a crash).
"""

import base64

from p2pd.core import datastream, filehash
from p2pd.peer.files.errors import FileProblem, TransferError

OPEN, READ, END, FINISH = "open", "read", "end", "finish"


class SendPlan:
    """The order of a send: every file from its verified offset, chunk by chunk, then the stream's end.
    :meth:`next` is ``(OPEN, index, offset)``, ``(READ, index, n)``, ``(END, index, 0)`` or ``(FINISH, None,
    0)``; :meth:`read` says how many bytes of a READ came."""

    def __init__(self, sizes, have, chunk=datastream.CHUNK):
        self.sizes = sizes
        self.have = have
        self.chunk = chunk
        self.index = 0
        self.position = 0
        self.opened = False
        self.finished = False

    def next(self):
        if self.finished:
            raise ValueError("the stream is finished")
        if not self.opened:
            if self.index >= len(self.sizes):
                self.finished = True
                return FINISH, None, 0
            self.opened = True
            self.position = self.have[self.index]
            return OPEN, self.index, self.position
        size = self.sizes[self.index]
        if self.position >= size:
            self.opened = False
            self.index += 1
            return END, self.index - 1, 0
        return READ, self.index, min(self.chunk, size - self.position)

    def read(self, n, name):
        """*n* bytes of the READ came (0: the file *name* shrank)."""
        if not n:
            raise FileProblem("%s shrank while it was being sent" % name, code="file_changed")
        self.position += n


class ReceiveRules:
    """What a receiver checks of the records of one session, for the offered *items* of peer *peer*."""

    def __init__(self, peer, items):
        self.peer = peer
        self.items = items
        self.index = None  # the file being received
        self.position = 0  # bytes of it received (not necessarily verified yet)
        self.open = False

    def file(self, obj):
        """A ``file`` record: ``(index, digests)`` of the file it starts (StreamError, TransferError)."""
        index = obj.get("i")
        expected = 0 if self.index is None else self.index + 1
        if index != expected or self.open or index >= len(self.items):
            raise datastream.StreamError("files out of order")
        try:
            digests = base64.b64decode(obj.get("d", ""), validate=True)
        except (TypeError, ValueError):
            raise datastream.StreamError("malformed hash list") from None
        item = self.items[index]
        self.index = index
        if len(digests) != filehash.chunk_count(item["size"]) * filehash.DIGEST \
                or filehash.root_of(digests) != item["hash"]:
            raise TransferError("hash mismatch: the hash list %s sent for %s does not match its offer"
                                % (self.peer, item["path"]), code="hash_mismatch")
        return index, digests

    def opened(self, have):
        """The file of the last ``file`` record is open for writing from *have* bytes on."""
        self.position = have
        self.open = True

    def data(self, n):
        """*n* bytes of the current file came (TransferError if they are outside a file or beyond its size)."""
        if not self.open:
            raise TransferError("%s sent data outside a file" % self.peer, code="bad_stream")
        size = self.items[self.index]["size"]
        if self.position + n > size:
            raise TransferError("%s sent more than the %d bytes it declared for %s; nothing was kept"
                                % (self.peer, size, self.items[self.index]["path"]), code="size_mismatch")
        self.position += n

    def end(self, index):
        """An ``end`` record: True if the file is to be closed and landed (False: it landed in an earlier
        session)."""
        if index != self.index:
            raise datastream.StreamError("end of a file that is not the current one")
        if not self.open:
            return False
        size = self.items[index]["size"]
        if self.position != size:
            raise TransferError("%s ended %s after %d of %d bytes" % (self.peer, self.items[index]["path"],
                                                                     self.position, size), code="size_mismatch")
        self.open = False
        return True

    def finish(self, saved):
        """The stream's end: every file must have landed (*saved* has no None)."""
        if self.open or None in saved:
            raise TransferError("%s ended the transfer before every file was sent" % self.peer,
                                code="size_mismatch")


def check_have(have, items):
    """The offsets of an ``accept``: one per item, none beyond its size."""
    return len(have) == len(items) and not any(h > i["size"] for h, i in zip(have, items))


def part_resume(length, journaled, size):
    """Where a partial file of *length* bytes resumes, the journal saying *journaled* were verified: there,
    or (a file shorter than the journal says: a power cut) at its last whole chunk."""
    if length != size and length < journaled:
        chunk = filehash.chunk_size(size)
        return length // chunk * chunk
    return journaled
