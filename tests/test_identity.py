"""A peer's identity on disk (private from creation, reloaded intact, certificate renewed from the same key,
refused clearly when unsafe or corrupt) and peer TLS (1.3 only, certificates required both ways, the peer's key
read after the handshake)."""

import datetime
import os
import stat

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IOpenSSLContextFactory,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from p2pd.core.signing import public_key_text
from p2pd.errors import P2PDError
from p2pd.peer import identity as identity_mod
from p2pd.peer.identity import (
    BOX_FILE,
    CERT_FILE,
    KEY_FILE,
    IdentityError,
    IdentityMismatch,
    client_tls_options,
    load_or_create,
    make_certificate,
    peer_key,
    server_tls_options,
    tls_options,
)

UTC = datetime.timezone.utc
NOW = datetime.datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
FILES = (KEY_FILE, CERT_FILE, BOX_FILE)


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def now_utc() -> datetime.datetime:
    return datetime.datetime.now(UTC)


# -- files -------------------------------------------------------------------------------------------------------

def test_first_start_makes_0700_dir_and_0600_files_even_with_umask_0(tmp_path):
    """With umask 0 the new data dir is 0700, every identity file 0600, and no temporary file is left."""
    data = tmp_path / "nested" / "data"
    old = os.umask(0)
    try:
        ident = load_or_create(str(data), "alice", NOW)
    finally:
        os.umask(old)
    assert mode(data) == 0o700
    assert sorted(os.listdir(data)) == sorted(FILES)
    assert {f: mode(data / f) for f in FILES} == {f: 0o600 for f in FILES}
    assert ident.name == "alice" and ident.public_text == ident.signing.public_text


def test_files_are_created_exclusive_nofollow_and_0600_from_the_start(tmp_path, monkeypatch):
    """Every file p2pd creates in the data dir is opened O_CREAT|O_EXCL|O_NOFOLLOW with mode 0600, so it is
    never wider, not even between creation and a chmod."""
    created = []
    real_open = os.open

    def spy(path, flags, mode=0o777, *args, **kwargs):
        if flags & os.O_CREAT:
            created.append((os.fspath(path), flags, mode))
        return real_open(path, flags, mode, *args, **kwargs)

    monkeypatch.setattr(identity_mod.os, "open", spy)
    load_or_create(str(tmp_path / "data"), "alice", NOW)
    monkeypatch.undo()
    assert len(created) == 3
    for path, flags, perm in created:
        assert flags & os.O_EXCL and flags & os.O_NOFOLLOW, path
        assert perm == 0o600, path


def test_existing_wide_data_dir_is_narrowed_to_0700(tmp_path):
    """A data dir that already exists with 0755 is made 0700."""
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    load_or_create(str(data), "alice", NOW)
    assert mode(data) == 0o700


def test_reload_gives_the_same_keys_and_certificate(tmp_path):
    """A second start loads the same signing key, box key and certificate."""
    first = load_or_create(str(tmp_path), "alice", NOW)
    again = load_or_create(str(tmp_path), "alice", NOW + datetime.timedelta(days=100))
    assert again.public_text == first.public_text
    assert again.box_public_text == first.box_public_text
    assert again.fingerprint == first.fingerprint
    assert again.fingerprint.startswith("sha256:") and len(again.fingerprint) == 7 + 64
    assert again.certificate.not_valid_before_utc == NOW - datetime.timedelta(days=1)
    assert again.certificate.not_valid_after_utc == NOW + datetime.timedelta(days=3650)


def test_certificate_shape(tmp_path):
    """The certificate is self-signed with Ed25519, CN is the name, not a CA, and peer_key accepts it."""
    ident = load_or_create(str(tmp_path), "alice", NOW)
    cert = ident.certificate
    cn = [x509.NameAttribute(NameOID.COMMON_NAME, "alice")]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME) == cn
    assert cert.issuer == cert.subject
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert peer_key(cert, NOW) == ident.public_text


@pytest.mark.parametrize("made_at", [NOW - datetime.timedelta(days=3651), NOW + datetime.timedelta(days=30)],
                         ids=["expired", "not-yet-valid"])
def test_unusable_certificate_is_renewed_from_the_same_key(tmp_path, made_at):
    """An expired or not-yet-valid certificate is remade from the same key; the file stays 0600."""
    old = load_or_create(str(tmp_path), "alice", made_at)
    new = load_or_create(str(tmp_path), "alice", NOW)
    assert new.public_text == old.public_text and new.box_public_text == old.box_public_text
    assert new.fingerprint != old.fingerprint
    assert peer_key(new.certificate, NOW) == old.public_text
    assert mode(tmp_path / CERT_FILE) == 0o600
    assert load_or_create(str(tmp_path), "alice", NOW).fingerprint == new.fingerprint


def test_certificate_close_to_expiry_is_renewed(tmp_path):
    """A certificate with less than 30 days left is renewed ahead of time."""
    old = load_or_create(str(tmp_path), "alice", NOW - datetime.timedelta(days=3640))
    assert load_or_create(str(tmp_path), "alice", NOW).fingerprint != old.fingerprint


def test_certificate_for_another_key_is_replaced(tmp_path):
    """A certificate that does not match identity.key is replaced by one for identity.key."""
    ident = load_or_create(str(tmp_path), "alice", NOW)
    foreign = make_certificate(Ed25519PrivateKey.generate(), "alice", NOW)
    (tmp_path / CERT_FILE).write_bytes(foreign.public_bytes(serialization.Encoding.PEM))
    again = load_or_create(str(tmp_path), "alice", NOW)
    assert again.public_text == ident.public_text
    assert peer_key(again.certificate, NOW) == ident.public_text


def test_missing_certificate_is_remade(tmp_path):
    """Deleting identity.crt is harmless: the next start makes one for the same key."""
    ident = load_or_create(str(tmp_path), "alice", NOW)
    (tmp_path / CERT_FILE).unlink()
    assert peer_key(load_or_create(str(tmp_path), "alice", NOW).certificate, NOW) == ident.public_text


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("perm", [0o644, 0o640, 0o604, 0o660], ids=oct)
def test_group_or_other_access_is_refused_with_the_chmod_to_run(tmp_path, name, perm):
    """An identity file that group or others can access is refused; the message names the chmod to run."""
    load_or_create(str(tmp_path), "alice", NOW)
    path = tmp_path / name
    os.chmod(path, perm)
    with pytest.raises(IdentityError) as info:
        load_or_create(str(tmp_path), "alice", NOW)
    assert "chmod 600 %s" % path in info.value.message
    assert "%04o" % perm in info.value.message
    assert isinstance(info.value, P2PDError)


@pytest.mark.parametrize("name, match", [
    (KEY_FILE, "not a PEM Ed25519 private key"),
    (BOX_FILE, "not a PEM X25519 private key"),
    (CERT_FILE, "not a PEM certificate"),
])
@pytest.mark.parametrize("content", [b"", b"garbage\n", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"],
                         ids=["empty", "garbage", "bad-pem"])
def test_corrupt_file_is_refused_clearly_and_left_alone(tmp_path, name, match, content):
    """A corrupt identity file is an IdentityError naming the file; it is not overwritten."""
    load_or_create(str(tmp_path), "alice", NOW)
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(IdentityError, match=match) as info:
        load_or_create(str(tmp_path), "alice", NOW)
    assert str(path) in info.value.message
    assert path.read_bytes() == content


def test_key_of_the_wrong_type_is_refused(tmp_path):
    """An EC key where the Ed25519 key belongs is refused, not used."""
    load_or_create(str(tmp_path), "alice", NOW)
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (tmp_path / KEY_FILE).write_bytes(ec_pem)
    with pytest.raises(IdentityError, match="not a PEM Ed25519 private key"):
        load_or_create(str(tmp_path), "alice", NOW)


def test_symlinked_key_file_is_refused(tmp_path):
    """identity.key must be a regular file, not a symbolic link (even to a 0600 key)."""
    load_or_create(str(tmp_path / "a"), "alice", NOW)
    (tmp_path / "b").mkdir(mode=0o700)
    os.symlink(tmp_path / "a" / KEY_FILE, tmp_path / "b" / KEY_FILE)
    with pytest.raises(IdentityError, match="symbolic link"):
        load_or_create(str(tmp_path / "b"), "alice", NOW)


def test_huge_file_is_refused(tmp_path):
    """An identity file far larger than any key is refused without reading it all."""
    load_or_create(str(tmp_path), "alice", NOW)
    (tmp_path / BOX_FILE).write_bytes(b"x" * (1024 * 1024))
    with pytest.raises(IdentityError, match="larger than"):
        load_or_create(str(tmp_path), "alice", NOW)


def test_data_dir_that_is_a_file_is_refused(tmp_path):
    """A data dir path that is a regular file gives a clear IdentityError."""
    (tmp_path / "file").write_text("x")
    with pytest.raises(IdentityError, match="data dir"):
        load_or_create(str(tmp_path / "file"), "alice", NOW)


# -- peer_key on certificates ------------------------------------------------------------------------------------

def test_peer_key_detects_an_expired_certificate():
    """A certificate whose validity ended is refused with 'expired'."""
    cert = make_certificate(Ed25519PrivateKey.generate(), "alice", NOW - datetime.timedelta(days=3660))
    with pytest.raises(IdentityMismatch, match="peer presented an expired certificate") as info:
        peer_key(cert, NOW)
    assert info.value.code == "identity_mismatch"


def test_peer_key_detects_a_not_yet_valid_certificate():
    """A certificate from the future is refused."""
    cert = make_certificate(Ed25519PrivateKey.generate(), "alice", NOW + datetime.timedelta(days=5))
    with pytest.raises(IdentityMismatch, match="not yet valid"):
        peer_key(cert, NOW)


def test_peer_key_accepts_pyopenssl_x509_and_unix_seconds():
    """A pyOpenSSL X509 (what transports return) and a float 'now' work like a cryptography cert and datetime."""
    key = Ed25519PrivateKey.generate()
    cert = make_certificate(key, "alice", NOW)
    assert peer_key(crypto.X509.from_cryptography(cert), NOW.timestamp()) == public_key_text(key.public_key())


def test_peer_key_without_certificate():
    """No certificate at all is 'no client certificate'."""
    with pytest.raises(IdentityMismatch, match="no client certificate"):
        peer_key(None, NOW)


def _builder(subject_key, subject="alice", issuer="alice"):
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(subject_key.public_key())
            .serial_number(1)
            .not_valid_before(NOW - datetime.timedelta(days=1))
            .not_valid_after(NOW + datetime.timedelta(days=1)))


def test_peer_key_refuses_a_certificate_signed_by_another_key():
    """A certificate for key A signed by key B (a CA, or an attacker) is not self-signed: refused."""
    cert = _builder(Ed25519PrivateKey.generate()).sign(Ed25519PrivateKey.generate(), None)
    with pytest.raises(IdentityMismatch, match="signature does not verify"):
        peer_key(cert, NOW)


def test_peer_key_refuses_a_certificate_with_another_issuer():
    """Issuer different from subject is refused even when the signature is by the subject key."""
    key = Ed25519PrivateKey.generate()
    with pytest.raises(IdentityMismatch, match="not self-signed"):
        peer_key(_builder(key, issuer="some-ca").sign(key, None), NOW)


def test_peer_key_refuses_non_ed25519_certificates():
    """An ECDSA certificate is refused: peer keys are Ed25519."""
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(IdentityMismatch, match="Ed25519"):
        peer_key(_builder(key).sign(key, hashes.SHA256()), NOW)


# -- TLS over loopback -------------------------------------------------------------------------------------------

@implementer(IHandshakeListener)
class Probe(Protocol):
    """Records what peer_key() said on handshake (``seen``: a key, an IdentityMismatch, or None when the
    connection ended without a handshake) and why the connection ended (``reason``)."""

    def __init__(self):
        self.seen = None
        self.reason = None
        self.settled = Deferred()  # fires on handshake or on connection loss, whichever comes first
        self.ended = Deferred()

    def handshakeCompleted(self):
        try:
            self.seen = peer_key(self.transport, now_utc())
        except IdentityMismatch as e:
            self.seen = e
        self.settled.callback(None)

    def connectionLost(self, reason):
        self.reason = reason
        if not self.settled.called:
            self.settled.callback(None)
        self.ended.callback(None)


class ProbeFactory(Factory):
    def __init__(self):
        self.probes = []

    def buildProtocol(self, addr):
        probe = Probe()
        probe.factory = self
        self.probes.append(probe)
        return probe


@implementer(IOpenSSLContextFactory)
class NoCertificate:
    """A TLS 1.3 client that presents no certificate."""

    def getContext(self):
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
        ctx.set_verify(SSL.VERIFY_NONE)
        return ctx


@implementer(IOpenSSLContextFactory)
class OnlyTLS12:
    """A client with a valid Ed25519 certificate that speaks at most TLS 1.2."""

    def __init__(self, ident):
        self.ident = ident

    def getContext(self):
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
        ctx.use_certificate(self.ident.certificate)
        ctx.use_privatekey(self.ident.signing.private_key)
        ctx.set_verify(SSL.VERIFY_NONE)
        return ctx


@pytest_twisted.inlineCallbacks
def connect(server_ident, client_options, wrap=False):
    """Run one loopback TLS connection; return (server probes, client probe) once both ends have closed.
    The client dials with ``SSL4ClientEndpoint``, or with ``wrapClientTLS`` around a TCP endpoint if *wrap*."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import (
        SSL4ClientEndpoint,
        SSL4ServerEndpoint,
        TCP4ClientEndpoint,
        wrapClientTLS,
    )

    server_factory = ProbeFactory()
    port = yield SSL4ServerEndpoint(reactor, 0, server_tls_options(server_ident), interface="127.0.0.1").listen(
        server_factory)
    try:
        client_factory = ProbeFactory()
        if wrap:
            endpoint = wrapClientTLS(client_options, TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port))
        else:
            endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port, client_options)
        client = yield endpoint.connect(client_factory)
        yield client.settled
        yield DeferredList([probe.settled for probe in server_factory.probes])
        for probe in [client] + server_factory.probes:
            probe.transport.loseConnection()
        yield DeferredList([probe.ended for probe in [client] + server_factory.probes])
    finally:
        yield port.stopListening()
    return server_factory.probes, client


def test_tls_options_provide_both_connection_creators(tmp_path):
    """The one options object serves the server and the client side, and its context is TLS 1.3."""
    options = tls_options(load_or_create(str(tmp_path), "alice"))
    assert IOpenSSLServerConnectionCreator.providedBy(options)
    assert IOpenSSLClientConnectionCreator.providedBy(options)
    assert isinstance(options.getContext(), SSL.Context)


@pytest.mark.parametrize("wrap", [False, True], ids=["SSL4ClientEndpoint", "wrapClientTLS"])
@pytest_twisted.inlineCallbacks
def test_handshake_gives_each_side_the_others_key(tmp_path, wrap):
    """After a real TLS handshake on 127.0.0.1 each side's peer_key() is the other identity's public key."""
    alice = load_or_create(str(tmp_path / "alice"), "alice")
    bob = load_or_create(str(tmp_path / "bob"), "bob")
    servers, client = yield connect(alice, client_tls_options(bob), wrap)
    assert [server.seen for server in servers] == [bob.public_text]
    assert client.seen == alice.public_text


@pytest_twisted.inlineCallbacks
def test_client_without_certificate_is_refused(tmp_path):
    """A client that presents no certificate never completes the handshake on the server; its connection
    ends in a TLS error."""
    alice = load_or_create(str(tmp_path / "alice"), "alice")
    servers, client = yield connect(alice, NoCertificate())
    assert [server.seen for server in servers] == [None]
    assert servers[0].reason.check(SSL.Error)
    assert client.reason.check(SSL.Error)


@pytest_twisted.inlineCallbacks
def test_tls12_client_is_refused(tmp_path):
    """A client limited to TLS 1.2 cannot connect, even with a valid certificate."""
    alice = load_or_create(str(tmp_path / "alice"), "alice")
    bob = load_or_create(str(tmp_path / "bob"), "bob")
    servers, client = yield connect(alice, OnlyTLS12(bob))
    assert client.seen is None and client.reason.check(SSL.Error)
    assert [server.seen for server in servers] == [None]


@pytest_twisted.inlineCallbacks
def test_expired_certificate_passes_tls_but_not_peer_key(tmp_path):
    """The TLS layer accepts any certificate (there is no CA); peer_key() then refuses an expired one."""
    alice = load_or_create(str(tmp_path / "alice"), "alice")
    stale = load_or_create(str(tmp_path / "bob"), "bob", now_utc() - datetime.timedelta(days=3660))
    servers, client = yield connect(alice, tls_options(stale))
    assert isinstance(servers[0].seen, IdentityMismatch)
    assert "peer presented an expired certificate" in servers[0].seen.message
    assert client.seen == alice.public_text
