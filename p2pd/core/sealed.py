"""Sealed messages for the registry's offline mailbox: only the recipient can read them, only the sender can
have written them, and nobody (the registry included) can re-address them.

A token is ``base64url(version || eph_pub || nonce || ciphertext)``::

    version     1 byte, VERSION
    eph_pub     32 bytes, a fresh X25519 public key for this message
    nonce       12 bytes, random
    ciphertext  ChaCha20-Poly1305(key, nonce, plaintext, aad=version || eph_pub)

    key = HKDF-SHA256(X25519(eph, recipient_box), salt=none,
                      info="p2pd-sealed-v1" || eph_pub || recipient_box_pub)

    plaintext = u8 len || sender_name || u8 len || recipient_name || signature (64) || payload
    signature = Ed25519_sender(SIGNATURE_DOMAIN || u8 len || sender_name || u8 len || recipient_name
                               || eph_pub || payload)

The AEAD keeps the registry from reading or altering a message; the sender's signature, which covers the
recipient's name and the ephemeral key, keeps anyone (the recipient included) from forging a message or passing a
real one on to somebody else as if it had been sent to them. :func:`open_sealed` decrypts and checks the
addressing; :meth:`Sealed.verify` checks the signature against the key the registry binds to the sender's name.

Everything that can go wrong with a token is a :class:`SealedError`; nothing else escapes.
"""

import os
import struct

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from p2pd.core import signing
from p2pd.core.names import canonical_name
from p2pd.errors import BadRequest, InvalidName, P2PDError

VERSION = 1
KDF_INFO = b"p2pd-sealed-v1"
SIGNATURE_DOMAIN = b"p2pd-sealed-v1 signature\x00"
KEY_LEN = 32
NONCE_LEN = 12
TAG_LEN = 16
SIG_LEN = 64
HEADER_LEN = 1 + KEY_LEN + NONCE_LEN

# A token must fit the registry's mailbox payload cap (64 KiB of text); base64url makes 4 characters of 3 bytes.
MAX_TOKEN_CHARS = 64 * 1024
MAX_NAME_BYTES = 64
MAX_PAYLOAD = 48 * 1024 - 512
_MAX_RAW = HEADER_LEN + TAG_LEN + 2 * (1 + MAX_NAME_BYTES) + SIG_LEN + MAX_PAYLOAD
assert (_MAX_RAW + 2) // 3 * 4 <= MAX_TOKEN_CHARS
_MIN_RAW = HEADER_LEN + TAG_LEN + 2 * 4 + SIG_LEN  # two 3-character names, empty payload


class SealedError(P2PDError):
    """A sealed message that cannot be made, opened or trusted; the message says why."""

    code = "sealed_invalid"
    status = 400


def box_public_text(key) -> str:
    """base64url of the raw 32-byte X25519 public key of *key* (a private or public X25519 key)."""
    if isinstance(key, X25519PrivateKey):
        key = key.public_key()
    return signing.b64e(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def parse_box_public(text) -> X25519PublicKey:
    """Decode a base64url raw X25519 public key; :class:`SealedError` when it is not one."""
    try:
        raw = signing.b64d(text)
        if len(raw) != KEY_LEN or signing.b64e(raw) != text:
            raise ValueError("wrong length")
        return X25519PublicKey.from_public_bytes(raw)
    except (ValueError, TypeError):
        raise SealedError("box key must be a base64url X25519 public key (32 bytes)") from None


def _name(text, role: str) -> bytes:
    try:
        name = canonical_name(text)
    except InvalidName as e:
        raise SealedError("%s: %s" % (role, e.message)) from None
    return name.encode("ascii")


def _lp(data: bytes) -> bytes:
    return struct.pack("B", len(data)) + data


def _signed_bytes(sender: bytes, recipient: bytes, eph_pub: bytes, payload: bytes) -> bytes:
    return SIGNATURE_DOMAIN + _lp(sender) + _lp(recipient) + eph_pub + payload


def _key(shared: bytes, eph_pub: bytes, recipient_pub: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=KDF_INFO + eph_pub + recipient_pub).derive(shared)


def _raw(key) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def seal(sender: signing.Identity, sender_name: str, recipient_name: str, recipient_box_public_text: str,
         payload: bytes) -> str:
    """A token that only the holder of the recipient's box key can open, signed by *sender*."""
    if not isinstance(payload, bytes):
        raise SealedError("a sealed payload must be bytes")
    if len(payload) > MAX_PAYLOAD:
        raise SealedError("message too large for the mailbox: %d bytes (at most %d)" % (len(payload), MAX_PAYLOAD))
    sender_b = _name(sender_name, "sender")
    recipient_b = _name(recipient_name, "recipient")
    recipient_pub = parse_box_public(recipient_box_public_text)
    eph = X25519PrivateKey.generate()
    eph_pub = _raw(eph.public_key())
    try:
        shared = eph.exchange(recipient_pub)
    except ValueError:
        raise SealedError("the recipient's box key is not usable (low-order point)") from None
    signature = sender.sign(_signed_bytes(sender_b, recipient_b, eph_pub, payload))
    plaintext = _lp(sender_b) + _lp(recipient_b) + signature + payload
    nonce = os.urandom(NONCE_LEN)
    header = struct.pack("B", VERSION) + eph_pub
    ciphertext = ChaCha20Poly1305(_key(shared, eph_pub, _raw(recipient_pub))).encrypt(nonce, plaintext, header)
    return signing.b64e(header + nonce + ciphertext)


class Sealed:
    """An opened message: who says they sent it, to whom, and what. Trust it only after :meth:`verify`."""

    def __init__(self, sender_name: str, recipient_name: str, payload: bytes, signature: bytes, eph_pub: bytes):
        self.sender_name = sender_name
        self.recipient_name = recipient_name
        self.payload = payload
        self._signature = signature
        self._eph_pub = eph_pub

    def verify(self, sender_public_text: str) -> None:
        """Check the sender's signature with the Ed25519 key the registry binds to :attr:`sender_name`."""
        try:
            key = signing.parse_public_key(sender_public_text)
        except BadRequest:
            raise SealedError("cannot verify a sealed message: the sender key is not an Ed25519 public key") from None
        data = _signed_bytes(self.sender_name.encode("ascii"), self.recipient_name.encode("ascii"), self._eph_pub,
                             self.payload)
        try:
            key.verify(self._signature, data)
        except InvalidSignature:
            raise SealedError("sealed message claims to be from %s but is not signed by %s's key"
                              % (self.sender_name, self.sender_name)) from None

    def __repr__(self):
        return "<Sealed from %s to %s, %d bytes>" % (self.sender_name, self.recipient_name, len(self.payload))


def _decode(token) -> bytes:
    if not isinstance(token, str):
        raise SealedError("a sealed message must be text")
    if len(token) > MAX_TOKEN_CHARS:
        raise SealedError("sealed message too long: %d characters (at most %d)" % (len(token), MAX_TOKEN_CHARS))
    try:
        raw = signing.b64d(token)
    except ValueError:
        raise SealedError("sealed message is not base64url") from None
    if signing.b64e(raw) != token:
        raise SealedError("sealed message is not canonical base64url")
    if len(raw) < _MIN_RAW:
        raise SealedError("sealed message too short: %d bytes" % len(raw))
    if raw[0] != VERSION:
        raise SealedError("unknown sealed message version %d (this p2pd reads version %d)" % (raw[0], VERSION))
    return raw


def _canonical_or_none(text: str):
    try:
        return canonical_name(text)
    except InvalidName:
        return None


def _inner_name(plaintext: bytes, offset: int, role: str):
    length = plaintext[offset]
    end = offset + 1 + length
    if end > len(plaintext):
        raise SealedError("sealed message is malformed: %s name runs past the end" % role)
    raw = plaintext[offset + 1:end]
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise SealedError("sealed message is malformed: %s name is not ASCII" % role) from None
    if _canonical_or_none(text) != text:
        raise SealedError("sealed message is malformed: %s name is not a canonical peer name" % role)
    return text, end


def open_sealed(token: str, recipient_box_private: X25519PrivateKey, recipient_name: str) -> Sealed:
    """Decrypt *token* with the recipient's box key and check it was addressed to *recipient_name*.

    The result's sender is only a claim until :meth:`Sealed.verify` checks it against the sender's key.
    """
    raw = _decode(token)
    expected = _name(recipient_name, "recipient").decode("ascii")
    header, eph_pub = raw[:1 + KEY_LEN], raw[1:1 + KEY_LEN]
    nonce, ciphertext = raw[1 + KEY_LEN:HEADER_LEN], raw[HEADER_LEN:]
    try:
        shared = recipient_box_private.exchange(X25519PublicKey.from_public_bytes(eph_pub))
    except ValueError:
        raise SealedError("sealed message carries an unusable ephemeral key") from None
    key = _key(shared, eph_pub, _raw(recipient_box_private.public_key()))
    try:
        plaintext = ChaCha20Poly1305(key).decrypt(nonce, ciphertext, header)
    except InvalidTag:
        raise SealedError("cannot open sealed message: it was not sealed for this key, or it was altered") from None
    sender, offset = _inner_name(plaintext, 0, "sender")
    if offset >= len(plaintext):
        raise SealedError("sealed message is malformed: no recipient name")
    recipient, offset = _inner_name(plaintext, offset, "recipient")
    if len(plaintext) < offset + SIG_LEN:
        raise SealedError("sealed message is malformed: signature missing")
    signature, payload = plaintext[offset:offset + SIG_LEN], plaintext[offset + SIG_LEN:]
    if recipient != expected:
        raise SealedError("sealed message was addressed to %s, not %s" % (recipient, expected))
    return Sealed(sender, recipient, payload, signature, eph_pub)
