"""A peer's identity on disk, and the TLS settings that present it to other peers.

The data dir (mode 0700) holds three files, each 0600 from the moment it exists:

- ``identity.key``: the Ed25519 private key (PEM, PKCS8). This key *is* the peer: the registry binds the name to
  its public half, requests to the registry are signed with it, and losing it loses the name.
- ``identity.crt``: a self-signed X.509 certificate for that key, its wrapper for TLS. It is remade from the same
  key whenever it is expired, not yet valid, close to expiry, or does not match the key.
- ``box.key``: the X25519 private key that opens sealed mailbox messages (:mod:`p2pd.core.sealed`).

Peer TLS has no CA. Both sides must present a certificate; the handshake accepts any, and only afterwards
:func:`peer_key` checks the certificate (Ed25519, self-signed, signature valid, in its validity period) and
returns the peer's key, which the caller compares with the key the registry holds for the name the peer claims.
"""

import datetime
import errno
import hashlib
import os
import stat

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLContextFactory,
    IOpenSSLServerConnectionCreator,
)
from twisted.logger import Logger
from zope.interface import implementer

from p2pd.core.sealed import box_public_text
from p2pd.core.signing import Identity, public_key_text
from p2pd.errors import IdentityMismatch, P2PDError

log = Logger()

KEY_FILE = "identity.key"
CERT_FILE = "identity.crt"
BOX_FILE = "box.key"

CERT_BACKDATE = datetime.timedelta(days=1)
CERT_LIFETIME = datetime.timedelta(days=3650)
CERT_RENEW_BEFORE = datetime.timedelta(days=30)  # remake the certificate when it has less left than this
MAX_FILE_BYTES = 64 * 1024


class IdentityError(P2PDError):
    """The identity files cannot be used (permissions, corruption, I/O); the message says what to do."""

    code = "identity_error"
    status = 500


class PeerIdentity:
    """This peer's keys: Ed25519 signing key (+ its TLS certificate) and X25519 mailbox box key."""

    def __init__(self, name: str, signing: Identity, certificate: x509.Certificate, box_private: X25519PrivateKey):
        self.name = name
        self.signing = signing
        self.public_text = signing.public_text
        self.certificate = certificate
        self.fingerprint = "sha256:" + hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()
        self.box_private = box_private
        self.box_public_text = box_public_text(box_private)

    def __repr__(self):
        return "<PeerIdentity %s key=%s>" % (self.name, self.public_text)


def _utc(now) -> datetime.datetime:
    """*now* as an aware UTC datetime; accepts a datetime (naive means UTC) or unix seconds (``reactor.seconds()``)."""
    if now is None:
        return datetime.datetime.now(datetime.timezone.utc)
    if isinstance(now, (int, float)):
        return datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
    if now.tzinfo is None:
        return now.replace(tzinfo=datetime.timezone.utc)
    return now.astimezone(datetime.timezone.utc)


# -- files -------------------------------------------------------------------------------------------------------

def _private_dir(data_dir: str) -> None:
    """Make *data_dir* (never wider than 0700 while it is created) and narrow it to 0700 if it exists."""
    try:
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
        st = os.stat(data_dir)
        if not stat.S_ISDIR(st.st_mode):
            raise IdentityError("data dir %s is not a directory" % data_dir)
        if st.st_uid != os.geteuid():
            raise IdentityError("data dir %s belongs to uid %d, not to this user (uid %d)"
                                % (data_dir, st.st_uid, os.geteuid()))
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(data_dir, 0o700)
    except OSError as e:
        raise IdentityError("cannot use data dir %s: %s" % (data_dir, e.strerror)) from None


def _read_private(path: str):
    """The bytes of *path*, or None when it does not exist. Refuses links, other owners and group/other access."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise IdentityError("%s is a symbolic link; p2pd only uses a regular file of its own here" % path) from None
        raise IdentityError("cannot read %s: %s" % (path, e.strerror)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise IdentityError("%s is not a regular file" % path)
        if st.st_uid != os.geteuid():
            raise IdentityError("%s belongs to uid %d, not to this user (uid %d)" % (path, st.st_uid, os.geteuid()))
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise IdentityError("%s is accessible by group or others (mode %04o); run: chmod 600 %s"
                                % (path, mode, path))
        chunks, size = [], 0
        while size <= MAX_FILE_BYTES:
            chunk = os.read(fd, MAX_FILE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_FILE_BYTES:
            raise IdentityError("%s is larger than %d bytes: not an identity file (corrupt?)" % (path, MAX_FILE_BYTES))
        return b"".join(chunks)
    except OSError as e:
        raise IdentityError("cannot read %s: %s" % (path, e.strerror)) from None
    finally:
        os.close(fd)


def _write_private(path: str, data: bytes, replace: bool) -> None:
    """Write *data* to *path* as a 0600 file. The bytes go to ``path.tmp`` (O_CREAT|O_EXCL|O_NOFOLLOW, 0600 from
    creation, fsynced) and are then linked into place, so *path* never exists half written or wider than 0600.
    With ``replace=False`` an existing *path* is never overwritten."""
    tmp = path + ".tmp"
    try:
        try:
            os.unlink(tmp)  # left by a crash; the dir is ours (0700), and unlink never follows a link
        except FileNotFoundError:
            pass
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
            os.unlink(tmp)
        dir_fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except FileExistsError:
        raise IdentityError("%s appeared while p2pd was creating it: is another p2pd using this data dir?"
                            % path) from None
    except OSError as e:
        raise IdentityError("cannot write %s: %s" % (path, e.strerror)) from None


def _load_key(path: str, kind, what: str, advice: str):
    data = _read_private(path)
    if data is None:
        return None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, kind):
        raise IdentityError("%s is not a PEM %s private key (corrupt?); %s" % (path, what, advice))
    return key


def _pem_private(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _load_or_create_key(path: str, kind, what: str, advice: str):
    key = _load_key(path, kind, what, advice)
    if key is None:
        key = kind.generate()
        _write_private(path, _pem_private(key), replace=False)
        log.info("created a new {what} key in {path}", what=what, path=path)
    return key


# -- certificates ------------------------------------------------------------------------------------------------

def make_certificate(key: Ed25519PrivateKey, name: str, now=None) -> x509.Certificate:
    """A self-signed certificate for *key*: CN=*name*, valid from a day before *now* for ten years, not a CA."""
    now = _utc(now)
    try:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    except (ValueError, TypeError):
        raise IdentityError("cannot make a certificate for the name %r" % (name,)) from None
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CERT_BACKDATE)
        .not_valid_after(now + CERT_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, None)
    )


def check_certificate(cert: x509.Certificate, now) -> Ed25519PublicKey:
    """The Ed25519 key of a self-signed *cert* whose signature verifies and which is valid at *now*;
    :class:`IdentityMismatch` otherwise."""
    now = _utc(now)
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, Ed25519PublicKey):
        raise IdentityMismatch("peer certificate does not carry an Ed25519 key")
    if cert.signature_algorithm_oid != SignatureAlgorithmOID.ED25519 or cert.issuer != cert.subject:
        raise IdentityMismatch("peer certificate is not self-signed with its Ed25519 key")
    try:
        key.verify(cert.signature, cert.tbs_certificate_bytes)
    except InvalidSignature:
        raise IdentityMismatch("peer certificate's signature does not verify with its own key") from None
    if now < cert.not_valid_before_utc:
        raise IdentityMismatch("peer presented a certificate that is not yet valid (valid from %s)"
                               % cert.not_valid_before_utc.isoformat())
    if now > cert.not_valid_after_utc:
        raise IdentityMismatch("peer presented an expired certificate (expired %s)"
                               % cert.not_valid_after_utc.isoformat())
    return key


def _certificate_problem(cert: x509.Certificate, key: Ed25519PrivateKey, name: str, now):
    """Why *cert* must be remade for *key*, or None when it can stay."""
    try:
        cert_key = check_certificate(cert, now)
    except IdentityMismatch as e:
        return e.message
    if public_key_text(cert_key) != public_key_text(key.public_key()):
        return "certificate is for another key"
    if cert.not_valid_after_utc - now < CERT_RENEW_BEFORE:
        return "certificate expires soon"
    if cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME) != [x509.NameAttribute(NameOID.COMMON_NAME, name)]:
        return "certificate is for another name"
    return None


def _load_cert(path: str):
    data = _read_private(path)
    if data is None:
        return None
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise IdentityError("%s is not a PEM certificate (corrupt?); delete it and p2pd will make a new one from %s"
                            % (path, KEY_FILE)) from None


def load_or_create(data_dir: str, name: str, now: datetime.datetime | None = None) -> PeerIdentity:
    """Load this peer's identity from *data_dir*, creating whatever is missing (first start).

    :raises IdentityError: a file has the wrong owner or permissions, is corrupt, or cannot be written.
    """
    now = _utc(now)
    _private_dir(data_dir)
    key_path = os.path.join(data_dir, KEY_FILE)
    key = _load_or_create_key(
        key_path, Ed25519PrivateKey, "Ed25519",
        "restore it from a backup (deleting it makes a new identity, and the registry keeps the name %r bound to "
        "the old key)" % (name,))
    box = _load_or_create_key(
        os.path.join(data_dir, BOX_FILE), X25519PrivateKey, "X25519",
        "delete it to make a new box key (mailbox messages sealed for the old one can no longer be read)")
    cert_path = os.path.join(data_dir, CERT_FILE)
    cert = _load_cert(cert_path)
    problem = "no certificate yet" if cert is None else _certificate_problem(cert, key, name, now)
    if problem:
        cert = make_certificate(key, name, now)
        _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM), replace=True)
        log.info("made a new TLS certificate for {name} in {path} ({reason})", name=name, path=cert_path,
                 reason=problem)
    return PeerIdentity(name, Identity(key), cert, box)


# -- TLS ---------------------------------------------------------------------------------------------------------

def _accept_any(connection, x509_cert, errnum, depth, ok) -> bool:
    """There is no CA: the TLS layer takes any chain, and :func:`peer_key` judges the peer's certificate."""
    return True


def _make_context(identity: PeerIdentity) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_max_proto_version(SSL.TLS1_3_VERSION)
    ctx.use_certificate(identity.certificate)
    ctx.use_privatekey(identity.signing.private_key)
    ctx.check_privatekey()
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _accept_any)
    # No resumption: every connection does a full handshake and shows its certificate.
    ctx.set_options(SSL.OP_NO_TICKET)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.set_session_id(b"p2pd-peer")
    return ctx


@implementer(IOpenSSLContextFactory, IOpenSSLServerConnectionCreator, IOpenSSLClientConnectionCreator)
class PeerTLSOptions:
    """TLS 1.3 only, our certificate, a peer certificate required both ways. One object serves as the context
    factory of ``SSL4ServerEndpoint``/``listenSSL`` and ``SSL4ClientEndpoint``/``connectSSL``."""

    def __init__(self, identity: PeerIdentity):
        self.identity = identity
        self._context = None

    def getContext(self) -> SSL.Context:
        if self._context is None:
            self._context = _make_context(self.identity)
        return self._context

    def serverConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        return SSL.Connection(self.getContext(), None)

    def clientConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        return SSL.Connection(self.getContext(), None)


def tls_options(identity: PeerIdentity) -> PeerTLSOptions:
    """Context factory / connection creator for both the listening and the connecting side."""
    return PeerTLSOptions(identity)


def server_tls_options(identity: PeerIdentity) -> PeerTLSOptions:
    """For ``SSL4ServerEndpoint``/``listenSSL`` (the same object as :func:`tls_options`)."""
    return PeerTLSOptions(identity)


def client_tls_options(identity: PeerIdentity) -> PeerTLSOptions:
    """For ``SSL4ClientEndpoint``/``connectSSL``/``wrapClientTLS`` (the same object as :func:`tls_options`)."""
    return PeerTLSOptions(identity)


def peer_key(transport_or_cert, now) -> str:
    """The base64url Ed25519 public key the peer proved in the TLS handshake.

    *transport_or_cert* is a TLS transport (after ``handshakeCompleted``), a pyOpenSSL ``X509`` or a cryptography
    certificate; *now* is a datetime or unix seconds. :class:`IdentityMismatch` when there is no certificate or it
    is not a valid self-signed Ed25519 certificate at *now*.
    """
    cert = transport_or_cert
    if hasattr(cert, "getPeerCertificate"):
        try:
            cert = cert.getPeerCertificate()
        except (AttributeError, SSL.Error):
            cert = None
    if cert is None:
        raise IdentityMismatch("no client certificate: the peer presented no TLS certificate")
    try:
        if isinstance(cert, crypto.X509):
            cert = cert.to_cryptography()
        if not isinstance(cert, x509.Certificate):
            raise IdentityMismatch("the peer presented no usable TLS certificate")
        return public_key_text(check_certificate(cert, now))
    except (ValueError, UnsupportedAlgorithm):  # a field cryptography cannot parse: the peer's problem, not ours
        raise IdentityMismatch("the peer presented a malformed TLS certificate") from None
