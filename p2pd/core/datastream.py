"""The data connection of a file transfer: AES-256-GCM records keyed by a secret agreed on the TLS link.

File bytes do not travel on the chat link (they would hold chat up behind them) but on a connection of their
own, opened for one transfer. The two daemons agree on a fresh 32-byte secret over their authenticated TLS
link (the receiver draws it when it accepts, like the transit key magic-wormhole derives from its PAKE), and
everything below is derived from it with HKDF-SHA256:

- ``sid``: 16 bytes that name the session. The side that dials opens with ``MAGIC + sid`` (24 bytes, in the
  clear) so the listener knows which transfer the connection is for; knowing ``sid`` proves nothing, because
- every byte after that is in records sealed with AES-256-GCM under a key per direction (sender to receiver,
  receiver to sender). A forged, altered, replayed, reordered or truncated record fails to open and the
  connection is dropped.

Why not TLS again? The TLS link already authenticated both peers and carried the secret; a second TLS
handshake would add nothing but a round trip, and large AEAD records are about twice as fast as Twisted's TLS
layer on loopback (it reads 32 KiB at a time through pyOpenSSL), which matters for a 1 GiB file.

A record on the wire: ``length`` (4 bytes, big endian, of the ciphertext), ``kind`` (1 byte), then
``AESGCM(nonce, payload, aad=kind)``: the kind travels in the clear but is authenticated. The nonce is the
record's number in its direction (8 bytes, big endian, after 4 zero bytes), so it never repeats under one key
and a record cannot be moved. ``kind`` is one of:

``D``  file bytes, appended to the current file          ``E``  end of the current file (payload: its index, 4 B)
``J``  a JSON object (start, status, errors)              ``Z``  end of the stream: nothing may follow
"""

import json
import os
import queue
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.exceptions import InvalidTag

MAGIC = b"P2PDDAT1"
PREAMBLE = len(MAGIC) + 16
SECRET_BYTES = 32
RECORD_MAX = 4 << 20  # largest plaintext payload in one record
CHUNK = 1 << 20  # the payload size a sender uses for file bytes
TAG = 16
_HEADER = struct.Struct(">Ic")
HEADER = _HEADER.size
STANDARD = HEADER + CHUNK + TAG  # the wire size of a full data record
_INDEX = struct.Struct(">I")

DATA, END, JSON, FINISH = b"D", b"E", b"J", b"Z"
KINDS = frozenset((DATA, END, JSON, FINISH))


class StreamError(ValueError):
    """The other side sent something that is not a valid record stream; the connection must be dropped."""

    def __init__(self, message, code="bad_stream"):
        super().__init__(message)
        self.code = code


def new_secret() -> bytes:
    return os.urandom(SECRET_BYTES)


class SessionKeys:
    """What both sides derive from the shared secret of one data session."""

    def __init__(self, secret: bytes):
        if not isinstance(secret, bytes) or len(secret) != SECRET_BYTES:
            raise ValueError("a data session secret is %d bytes" % SECRET_BYTES)
        material = HKDF(algorithm=hashes.SHA256(), length=16 + 2 * 32, salt=None,
                        info=b"p2pd data session v1").derive(secret)
        self.sid = material[:16]
        self.to_receiver = material[16:48]
        self.to_sender = material[48:80]

    @property
    def preamble(self) -> bytes:
        return MAGIC + self.sid


class Sealer:
    """Seals the records of one direction."""

    def __init__(self, key: bytes):
        self._aead = AESGCM(key)
        self._n = 0

    def seal_parts(self, kind: bytes, payload=b"") -> tuple:
        """The record as ``(header, ciphertext)``, for ``transport.writeSequence`` (no copy to join them)."""
        nonce = b"\0\0\0\0" + self._n.to_bytes(8, "big")
        self._n += 1
        body = self._aead.encrypt(nonce, payload, kind)
        return _HEADER.pack(len(body), kind), body

    def seal(self, kind: bytes, payload=b"") -> bytes:
        return b"".join(self.seal_parts(kind, payload))

    def data(self, chunk) -> tuple:
        """A data record as ``(header, ciphertext)``."""
        return self.seal_parts(DATA, chunk)

    def data_into(self, chunk, out: bytearray) -> memoryview:
        """A data record sealed into *out* (at least ``len(chunk) + HEADER + TAG`` bytes): a view of it."""
        length = len(chunk) + TAG
        _HEADER.pack_into(out, 0, length, DATA)
        nonce = b"\0\0\0\0" + self._n.to_bytes(8, "big")
        self._n += 1
        view = memoryview(out)
        self._aead.encrypt_into(nonce, chunk, DATA, view[HEADER:HEADER + length])
        return view[:HEADER + length]

    def end(self, index: int) -> bytes:
        return self.seal(END, _INDEX.pack(index))

    def json(self, obj) -> bytes:
        return self.seal(JSON, json.dumps(obj, ensure_ascii=True, separators=(",", ":")).encode("ascii"))

    def finish(self) -> bytes:
        return self.seal(FINISH)


class BufferPool:
    """Reusable buffers for decrypted file bytes: ``take(n)`` a bytearray view of *n* bytes (None when the pool is
    empty or *n* too big: the caller allocates), ``give(view)`` it back once the bytes are written.

    Reuse matters more than it seems: the kernel copies from these buffers into the page cache, and copying from
    pages it saw a moment ago costs a quarter of copying from freshly allocated ones (measured on this project's
    VM: 0.15 s against 0.35-1.4 s of system time per GiB). Thread-safe: taken in the reactor thread, given back by
    the writer thread."""

    def __init__(self, count=24, size=CHUNK):
        self.size = size
        self.count = count
        self.made = 0  # buffers are made when first needed: a daemon that only sends never holds any
        self._free = queue.SimpleQueue()

    def take(self, n):
        if n > self.size:
            return None
        try:
            buf = self._free.get_nowait()
        except queue.Empty:
            if self.made >= self.count:
                return None
            self.made += 1
            buf = bytearray(self.size)
        return memoryview(buf)[:n]

    def give(self, view):
        if isinstance(view, memoryview) and isinstance(view.obj, bytearray) and len(view.obj) == self.size:
            buf = view.obj
            view.release()
            self._free.put(buf)


class Opener:
    """Opens the records of one direction as bytes arrive.

    Bytes land in one buffer of the opener's own, either copied in by ``feed(data)`` or read straight into it:
    ``space()`` is where the next bytes should go, ``filled(n)`` says *n* bytes went there, and ``records()``
    yields the ``(kind, payload)`` of every record now complete. ``space()`` never reaches past the end of the
    record being received (or past one standard record when its header is not in yet), so a ``recv_into`` that
    fills it ends on a record boundary and a record is decrypted where it arrived: no join, no copy. The buffer
    holds at most one record plus what one ``feed`` brings. Raises :class:`StreamError` for a record that is
    too long, does not authenticate, has an unknown kind, or follows ``Z``."""

    def __init__(self, key: bytes, buffers: BufferPool | None = None):
        self._aead = AESGCM(key)
        self._n = 0
        self.buffers = buffers  # where DATA payloads are decrypted into (else: new bytes each)
        self._buf = bytearray(2 * STANDARD)
        self._view = memoryview(self._buf)
        self._start = 0  # the first byte not opened yet
        self._end = 0  # the end of what arrived
        self.finished = False

    @property
    def buffered(self) -> int:
        return self._end - self._start

    def _record_length(self):
        """The full length (header included) of the record starting at ``_start``, once its header is in."""
        length, _ = _HEADER.unpack_from(self._buf, self._start)
        if length < TAG or length > RECORD_MAX + TAG:
            raise StreamError("record length %d out of range" % length)
        if self.finished:
            raise StreamError("data after the end of the stream")
        return HEADER + length

    def space(self, at_least=0) -> memoryview:
        """Where the next bytes go: up to the end of the current record, or one standard record's worth when its
        header is not in yet (at least *at_least* bytes, for ``feed``)."""
        have = self._end - self._start
        if have == 0:
            self._start = self._end = 0
        want = (self._record_length() if have >= HEADER else STANDARD) - have
        want = max(want, at_least, 1)
        if self._end + want > len(self._buf):
            self._make_room(have + want)
        return self._view[self._end:self._end + want]

    def _make_room(self, total):
        """Moves what is buffered to the front of the buffer (a part of one record: rare), in a bigger one if
        *total* bytes do not fit."""
        kept = bytes(self._view[self._start:self._end])
        if total > len(self._buf):
            self._view.release()
            self._buf = bytearray(max(total, 2 * STANDARD))
            self._view = memoryview(self._buf)
        self._view[:len(kept)] = kept
        self._start, self._end = 0, len(kept)

    def release(self):
        """Drops the buffer (the stream is over); what was buffered is gone."""
        self._view.release()
        self._buf = bytearray()
        self._view = memoryview(self._buf)
        self._start = self._end = 0

    def filled(self, n: int):
        """*n* bytes were written at the start of the last ``space()``."""
        self._end += n

    def feed(self, data):
        """Copies *data* in and yields the records it completes."""
        view = memoryview(data)
        while len(view):
            room = self.space(len(view))
            n = min(len(room), len(view))
            room[:n] = view[:n]
            self.filled(n)
            view = view[n:]
            yield from self.records()
        if self.finished and self.buffered:
            raise StreamError("data after the end of the stream")

    def records(self):
        """Opens and yields the records that are complete in the buffer."""
        while self._end - self._start >= HEADER:
            total = self._record_length()
            if self._end - self._start < total:
                return
            kind = bytes(self._view[self._start + 4:self._start + 5])
            if kind not in KINDS:
                raise StreamError("unknown record kind %r" % (kind,))
            body = self._view[self._start + HEADER:self._start + total]
            nonce = b"\0\0\0\0" + self._n.to_bytes(8, "big")
            into = self.buffers.take(len(body) - TAG) if kind == DATA and self.buffers is not None else None
            try:
                if into is None:
                    plain = self._aead.decrypt(nonce, body, kind)
                else:
                    self._aead.decrypt_into(nonce, body, kind, into)
                    plain = into
            except InvalidTag:
                if into is not None:
                    self.buffers.give(into)
                raise StreamError("a record failed authentication (forged, altered or out of order)",
                                  code="bad_record") from None
            finally:
                body.release()
            self._n += 1
            self._start += total
            if kind == DATA:
                yield DATA, plain
            elif kind == END:
                if len(plain) != 4:
                    raise StreamError("malformed end-of-file record")
                yield END, _INDEX.unpack(plain)[0]
            elif kind == JSON:
                try:
                    obj = json.loads(plain.decode("ascii"))
                except (UnicodeDecodeError, ValueError, RecursionError):
                    raise StreamError("malformed JSON record") from None
                if not isinstance(obj, dict):
                    raise StreamError("a JSON record must hold an object")
                yield JSON, obj
            else:
                self.finished = True
                yield FINISH, None
                if self.buffered:
                    raise StreamError("data after the end of the stream")
