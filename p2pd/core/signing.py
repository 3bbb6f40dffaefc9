"""Ed25519 identities and signed requests.

A name is bound to an Ed25519 public key by its first registration; every later change for that name is a
request signed by that key. The signature covers the method, the path (with query), the acting name, a
timestamp, a nonce and the SHA-256 of the body, so no covered field can be altered and, since the registry
remembers nonces for twice the accepted clock window, a captured request cannot be replayed.

Headers::

    X-P2PD-Name:      the acting peer name (canonical)
    X-P2PD-Timestamp: integer unix seconds
    X-P2PD-Nonce:     16-64 characters of [A-Za-z0-9_-]
    X-P2PD-Signature: base64url(Ed25519(canonical_request(...)))
"""

import base64
import hashlib
import os
import re

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from p2pd.errors import BadRequest, Unauthorized

H_NAME = "X-P2PD-Name"
H_TIMESTAMP = "X-P2PD-Timestamp"
H_NONCE = "X-P2PD-Nonce"
H_SIGNATURE = "X-P2PD-Signature"
SIGNED_HEADERS = (H_NAME, H_TIMESTAMP, H_NONCE, H_SIGNATURE)

WINDOW = 60  # seconds of clock difference accepted either way
NONCE_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
TIMESTAMP_RE = re.compile(r"[0-9]{1,12}")


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64d(text: str) -> bytes:
    if not isinstance(text, str) or not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def parse_public_key(text, field="key") -> Ed25519PublicKey:
    """Decode a base64url raw 32-byte public key; :class:`BadRequest` when it is not one.

    For ``box`` (an X25519 key) the bytes are only checked for length, and handed back as an Ed25519 object
    just so :func:`public_key_text` can re-encode them canonically."""
    try:
        raw = b64d(text)
        if len(raw) != 32:
            raise ValueError("wrong length")
        if field == "box":
            return _RawKey(raw)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, TypeError):
        raise BadRequest("%s must be a base64url public key (32 bytes)" % field) from None


class _RawKey:
    def __init__(self, raw):
        self.raw = raw

    def public_bytes(self, *_):
        return self.raw


def public_key_text(key: Ed25519PublicKey) -> str:
    return b64e(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


class Identity:
    """A peer's private key and the public key that the registry binds to its name."""

    def __init__(self, private_key: Ed25519PrivateKey):
        self.private_key = private_key
        self.public_key = private_key.public_key()
        self.public_text = public_key_text(self.public_key)

    @classmethod
    def generate(cls) -> "Identity":
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> "Identity":
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    def private_bytes(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data)


def canonical_request(method: str, path: str, name: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    """The exact bytes that a request signature covers."""
    return "\n".join(
        ["p2pd-request-v1", method.upper(), path, name, timestamp, nonce, hashlib.sha256(body).hexdigest()]
    ).encode("utf-8")


def new_nonce() -> str:
    return b64e(os.urandom(18))


def sign_request(identity: Identity, name: str, method: str, path: str, body: bytes, now: float,
                 nonce: str = None) -> dict:
    """Headers (str -> str) that authenticate this request as *name*."""
    timestamp = str(int(now))
    nonce = nonce or new_nonce()
    signature = identity.sign(canonical_request(method, path, name, timestamp, nonce, body))
    return {H_NAME: name, H_TIMESTAMP: timestamp, H_NONCE: nonce, H_SIGNATURE: b64e(signature)}


class SignedRequest:
    """The signature headers of an incoming request, checked for form (not yet for the key)."""

    def __init__(self, headers: dict):
        missing = [h for h in SIGNED_HEADERS if not headers.get(h)]
        if missing:
            raise Unauthorized("request must be signed: missing %s" % ", ".join(missing))
        self.name = headers[H_NAME]
        self.timestamp = headers[H_TIMESTAMP]
        self.nonce = headers[H_NONCE]
        if not TIMESTAMP_RE.fullmatch(self.timestamp):
            raise Unauthorized("%s must be integer unix seconds" % H_TIMESTAMP)
        if not NONCE_RE.fullmatch(self.nonce):
            raise Unauthorized("%s must be 16-64 characters of A-Z a-z 0-9 _ -" % H_NONCE)
        try:
            self.signature = b64d(headers[H_SIGNATURE])
        except ValueError:
            raise Unauthorized("%s is not base64url" % H_SIGNATURE) from None

    def check_fresh(self, now: float, window: int = WINDOW):
        if abs(int(self.timestamp) - now) > window:
            raise Unauthorized("request timestamp is outside the accepted window of %d s" % window)

    def verify(self, key: Ed25519PublicKey, method: str, path: str, body: bytes):
        data = canonical_request(method, path, self.name, self.timestamp, self.nonce, body)
        try:
            key.verify(self.signature, data)
        except InvalidSignature:
            raise Unauthorized("bad signature for %s" % self.name) from None
