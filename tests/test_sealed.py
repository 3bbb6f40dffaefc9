"""Sealed mailbox messages: only the recipient can open them, only the sender can have signed them, nobody can
re-address them, and a bad token is always a SealedError."""

import ast
import pathlib

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from p2pd.core import sealed
from p2pd.core.sealed import MAX_PAYLOAD, SealedError, box_public_text, open_sealed, seal
from p2pd.core.signing import Identity, b64d, b64e

ALICE = Identity.generate()
MALLORY = Identity.generate()
BOB_BOX = X25519PrivateKey.generate()
CAROL_BOX = X25519PrivateKey.generate()


def to_bob(payload: bytes = b"hi bob", sender=ALICE, sender_name="alice") -> str:
    return seal(sender, sender_name, "bob", box_public_text(BOB_BOX), payload)


def test_round_trip_keeps_unicode_text():
    """Persian and emoji text come out byte for byte, with the sender's name, and the signature verifies."""
    text = "سلام باب، فایل رسید؟ 👋🏽📎 ok"
    opened = open_sealed(to_bob(text.encode("utf-8")), BOB_BOX, "bob")
    assert opened.payload.decode("utf-8") == text
    assert (opened.sender_name, opened.recipient_name) == ("alice", "bob")
    opened.verify(ALICE.public_text)


def test_round_trip_of_empty_and_largest_payload_fits_the_mailbox_cap():
    """Empty and MAX_PAYLOAD-byte payloads both round-trip, and the largest token fits the registry's 64 KiB."""
    for payload in (b"", bytes(range(256)) * (MAX_PAYLOAD // 256) + b"x" * (MAX_PAYLOAD % 256)):
        token = seal(ALICE, "alice-with-a-name-32-characters_", "bob-with-a-name-of-32-characters",
                     box_public_text(BOB_BOX), payload)
        assert len(token) <= 64 * 1024
        assert open_sealed(token, BOB_BOX, "bob-with-a-name-of-32-characters").payload == payload


def test_each_seal_is_fresh():
    """The same message sealed twice gives two different tokens (fresh ephemeral key and nonce)."""
    assert to_bob(b"same") != to_bob(b"same")


def test_payload_over_the_cap_is_refused():
    """seal() refuses a payload the mailbox could not hold."""
    with pytest.raises(SealedError, match="too large"):
        to_bob(b"x" * (MAX_PAYLOAD + 1))


def test_wrong_recipient_key_cannot_open():
    """A token sealed for bob's box key does not open with carol's, even when she claims to be bob."""
    with pytest.raises(SealedError, match="not sealed for this key"):
        open_sealed(to_bob(), CAROL_BOX, "bob")


def test_re_addressed_message_is_refused():
    """Bob's own key opens the token, but a caller expecting it for another name is refused."""
    token = seal(ALICE, "alice", "bob", box_public_text(CAROL_BOX), b"meant for bob")
    with pytest.raises(SealedError, match="addressed to bob, not carol"):
        open_sealed(token, CAROL_BOX, "carol")


def test_recipient_name_is_compared_canonically():
    """'BOB' and 'bob' are the same peer name."""
    assert open_sealed(to_bob(), BOB_BOX, "BOB").recipient_name == "bob"


def test_verify_with_another_senders_key_fails():
    """A message that claims to be from alice but was signed by mallory fails verify() with alice's key."""
    forged = to_bob(b"send me your keys", sender=MALLORY, sender_name="alice")
    opened = open_sealed(forged, BOB_BOX, "bob")
    assert opened.sender_name == "alice"
    with pytest.raises(SealedError, match="not signed by alice's key"):
        opened.verify(ALICE.public_text)
    opened.verify(MALLORY.public_text)


def reseal(plaintext: bytes, recipient_box) -> str:
    """Seal arbitrary inner bytes for *recipient_box* the way seal() does (what a dishonest recipient could do)."""
    import os
    import struct

    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    eph = X25519PrivateKey.generate()
    eph_pub = sealed._raw(eph.public_key())
    key = sealed._key(eph.exchange(recipient_box.public_key()), eph_pub, sealed._raw(recipient_box.public_key()))
    header = struct.pack("B", sealed.VERSION) + eph_pub
    nonce = os.urandom(sealed.NONCE_LEN)
    return b64e(header + nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, header))


def test_recipient_cannot_forward_a_signed_message_as_addressed_to_someone_else():
    """Bob re-seals alice's signed message for carol: left addressed to bob, carol refuses it; re-addressed to
    carol, alice's signature no longer verifies."""
    opened = open_sealed(to_bob(b"for bob only"), BOB_BOX, "bob")
    signature = opened._signature
    as_is = reseal(b"\x05alice\x03bob" + signature + opened.payload, CAROL_BOX)
    with pytest.raises(SealedError, match="addressed to bob, not carol"):
        open_sealed(as_is, CAROL_BOX, "carol")
    readdressed = open_sealed(reseal(b"\x05alice\x05carol" + signature + opened.payload, CAROL_BOX), CAROL_BOX,
                              "carol")
    with pytest.raises(SealedError, match="not signed by alice's key"):
        readdressed.verify(ALICE.public_text)


def test_verify_with_a_malformed_key_fails_with_sealed_error():
    """verify() turns a malformed sender key into SealedError too."""
    with pytest.raises(SealedError, match="not an Ed25519 public key"):
        open_sealed(to_bob(), BOB_BOX, "bob").verify("not a key")


def test_every_flipped_byte_is_detected():
    """Flipping any single bit pattern in any byte of a small token makes it fail with SealedError."""
    raw = b64d(to_bob(b"x"))
    for i in range(len(raw)):
        for mask in (0x01, 0x80, 0xFF):
            tampered = bytearray(raw)
            tampered[i] ^= mask
            with pytest.raises(SealedError):
                open_sealed(b64e(bytes(tampered)), BOB_BOX, "bob")


def test_truncated_and_extended_tokens_fail():
    """Cutting bytes off or appending bytes fails with SealedError."""
    raw = b64d(to_bob())
    for bad in [raw[:n] for n in range(len(raw))] + [raw + b"\0", raw + raw]:
        with pytest.raises(SealedError):
            open_sealed(b64e(bad), BOB_BOX, "bob")


def test_non_canonical_text_is_refused():
    """A token whose last character carries nonzero unused bits (same bytes, other text) is refused."""
    token = to_bob(b"ab")
    assert len(b64d(token)) % 3 != 0
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for c in alphabet:
        variant = token[:-1] + c
        if variant != token and b64d(variant) == b64d(token):
            with pytest.raises(SealedError, match="canonical"):
                open_sealed(variant, BOB_BOX, "bob")
            break
    else:
        pytest.fail("no non-canonical spelling found")


def test_unknown_version_is_named():
    """A token of a future version says so."""
    raw = bytearray(b64d(to_bob()))
    raw[0] = 2
    with pytest.raises(SealedError, match="unknown sealed message version 2"):
        open_sealed(b64e(bytes(raw)), BOB_BOX, "bob")


def test_low_order_ephemeral_key_is_refused():
    """An all-zero ephemeral key (a low-order point) is a SealedError, not a ValueError."""
    raw = bytearray(b64d(to_bob()))
    raw[1:33] = bytes(32)
    with pytest.raises(SealedError):
        open_sealed(b64e(bytes(raw)), BOB_BOX, "bob")


@pytest.mark.parametrize("token", [None, b"bytes", 42, "", "A", "====", "not base64!", "é", "A" * (64 * 1024 + 1)])
def test_malformed_token_types_and_text(token):
    """Anything that is not a well-formed token text is a SealedError."""
    with pytest.raises(SealedError):
        open_sealed(token, BOB_BOX, "bob")


@pytest.mark.parametrize("kwargs, match", [
    ({"recipient_box_public_text": "short"}, "box key"),
    ({"recipient_name": "Bоb"}, "recipient"),  # Cyrillic о
    ({"sender_name": "a"}, "sender"),
    ({"payload": "text, not bytes"}, "bytes"),
])
def test_seal_refuses_bad_arguments(kwargs, match):
    """seal() refuses a bad box key, a non-canonical name or a str payload with SealedError."""
    args = {"sender": ALICE, "sender_name": "alice", "recipient_name": "bob",
            "recipient_box_public_text": box_public_text(BOB_BOX), "payload": b"x"}
    args.update(kwargs)
    with pytest.raises(SealedError, match=match):
        seal(**args)


@given(st.text(max_size=300))
def test_random_text_tokens_only_raise_sealed_error(token):
    """Random text never raises anything but SealedError."""
    with pytest.raises(SealedError):
        open_sealed(token, BOB_BOX, "bob")


@given(st.binary(min_size=0, max_size=400))
def test_random_versioned_byte_tokens_only_raise_sealed_error(body):
    """Random bytes behind a valid version byte never raise anything but SealedError."""
    with pytest.raises(SealedError):
        open_sealed(b64e(b"\x01" + body), BOB_BOX, "bob")


@given(st.binary(min_size=1, max_size=200), st.integers(min_value=0))
def test_random_splices_of_a_real_token_only_raise_sealed_error(junk, where):
    """A real token with random bytes spliced in never raises anything but SealedError."""
    raw = b64d(to_bob())
    at = where % (len(raw) + 1)
    with pytest.raises(SealedError):
        open_sealed(b64e(raw[:at] + junk + raw[at:]), BOB_BOX, "bob")


def test_module_is_pure():
    """The sealed codec imports nothing from twisted."""
    tree = ast.parse(pathlib.Path(sealed.__file__).read_text())
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m and m.startswith("twisted")]
