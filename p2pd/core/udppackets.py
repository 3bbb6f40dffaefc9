"""The sealed datagrams of the UDP stream (issue 14): keys, the packet header, AEAD, and the replay window.

Keys come from no handshake of their own. The two daemons already share an authenticated TLS link; both sides
take from it a TLS exporter value (RFC 5705, the same bytes at both ends and nowhere else) and the transfer's
session secret agreed on that link, and HKDF-SHA256 turns them into, per direction, a 16-byte AES-GCM key and
an 8-byte connection id. A datagram on the wire::

    0x50 | connection id (8 B) | packet number (8 B, big endian) | AES-128-GCM(frames) with a 16 B tag

The first byte tells the daemon's one UDP socket that this is a stream datagram (RFC 7983's idea: STUN is 0-3);
the connection id names the connection at the receiver (so a NAT rebinding the sender does not lose it); the
header is the associated data and the nonce is the packet number, which a sender never reuses (a lost frame goes
again in a new packet). A receiver drops, and counts, what fails to open (forged, corrupted, truncated) and what
it has seen before (:class:`ReplayWindow`): nothing unauthenticated is ever answered.
"""

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

FIRST_BYTE = 0x50
EXPORTER_LABEL = b"EXPORTER-p2pd-udp-stream"
_HEADER = struct.Struct(">B8sQ")
HEADER = _HEADER.size  # 17
TAG = 16
OVERHEAD = HEADER + TAG
MAX_PACKET_NUMBER = (1 << 62) - 1


class DirectionKeys:
    """What one direction of a connection needs: its AES-GCM key and the connection id its datagrams carry."""

    __slots__ = ("key", "cid")

    def __init__(self, key: bytes, cid: bytes):
        self.key = key
        self.cid = cid


def derive(exporter: bytes, secret: bytes, initiator: bool):
    """``(send, receive)`` :class:`DirectionKeys` for one side of a connection: the *initiator* (the side that
    sends the file) and the other side get each other's halves. *exporter* is the TLS link's exported keying
    material (:data:`EXPORTER_LABEL`), *secret* the transfer's own secret agreed on that link."""
    if len(exporter) < 32 or len(secret) < 16:
        raise ValueError("the UDP stream needs 32 bytes of TLS exporter and a 16-byte session secret")
    material = HKDF(algorithm=hashes.SHA256(), length=2 * (16 + 8), salt=secret,
                    info=b"p2pd udp stream v1").derive(exporter)
    forward = DirectionKeys(material[0:16], material[16:24])
    backward = DirectionKeys(material[24:40], material[40:48])
    return (forward, backward) if initiator else (backward, forward)


def connection_id(data) -> bytes:
    """The connection id of a stream datagram (None if it is too short to be one)."""
    if len(data) < OVERHEAD or data[0] != FIRST_BYTE:
        return None
    return bytes(data[1:9])


class Sealer:
    """Seals the datagrams of one direction; every call uses the next packet number."""

    def __init__(self, keys: DirectionKeys):
        self._aead = AESGCM(keys.key)
        self._cid = keys.cid
        self.next_pn = 0

    def seal(self, plaintext) -> tuple:
        """``(packet number, datagram)``."""
        pn = self.next_pn
        if pn > MAX_PACKET_NUMBER:
            raise OverflowError("packet numbers exhausted")
        self.next_pn = pn + 1
        header = _HEADER.pack(FIRST_BYTE, self._cid, pn)
        return pn, header + self._aead.encrypt(b"\0\0\0\0" + header[9:17], plaintext, header)


class Opener:
    """Opens the datagrams of one direction: ``open(datagram)`` is ``(packet number, plaintext)``, or None if the
    datagram is not authentic (``forged`` counts those) or was seen before (``replayed``)."""

    def __init__(self, keys: DirectionKeys):
        self._aead = AESGCM(keys.key)
        self.cid = keys.cid
        self.window = ReplayWindow()
        self.forged = 0
        self.replayed = 0

    def open(self, datagram):
        if len(datagram) < OVERHEAD or datagram[0] != FIRST_BYTE or datagram[1:9] != self.cid:
            self.forged += 1
            return None
        header = bytes(datagram[:HEADER])
        pn = int.from_bytes(header[9:17], "big")
        try:
            plain = self._aead.decrypt(b"\0\0\0\0" + header[9:17], bytes(datagram[HEADER:]), header)
        except InvalidTag:
            self.forged += 1
            return None
        if self.window.seen(pn):  # checked after the tag, so that a forgery is always counted as one
            self.replayed += 1
            return None
        self.window.add(pn)
        return pn, plain


class ReplayWindow:
    """The packet numbers received, as a bitmap of the last ``SIZE`` below the highest (RFC 4303 section 3.4.3):
    one seen before, or older than the window, is a replay."""

    SIZE = 4096

    def __init__(self):
        self.highest = -1
        self.bits = 0  # bit i: packet number highest - i was received

    def seen(self, pn: int) -> bool:
        if pn > self.highest:
            return False
        back = self.highest - pn
        return back >= self.SIZE or bool(self.bits >> back & 1)

    def add(self, pn: int):
        if pn > self.highest:
            shift = pn - self.highest
            self.bits = ((self.bits << shift) | 1) & ((1 << self.SIZE) - 1) if shift < self.SIZE else 1
            self.highest = pn
        else:
            self.bits |= 1 << (self.highest - pn)
