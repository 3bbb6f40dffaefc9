"""The AES-GCM record stream of data connections (p2pd.core.datastream): records survive any split of the byte
stream, and anything forged, altered, replayed, reordered, oversized or trailing is a StreamError, never another
exception, with nothing yielded for the bad record."""

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pd.core import datastream
from p2pd.core.datastream import DATA, END, FINISH, JSON, MAGIC, PREAMBLE, RECORD_MAX, TAG, Opener, Sealer, \
    SessionKeys, StreamError

SECRET = bytes(range(32))
KEYS = SessionKeys(SECRET)
HEADER = 5  # length (4 bytes) + kind (1 byte)


def pair(key=KEYS.to_receiver):
    return Sealer(key), Opener(key)


def feed_all(opener, pieces):
    """Everything *opener* yields for *pieces* fed one after the other (no error expected)."""
    out = []
    for piece in pieces:
        out.extend(opener.feed(piece))
    return out


def feed_until_error(opener, pieces):
    """``(records yielded, the StreamError)``; fails the test if no StreamError (or another exception) comes."""
    out = []
    with pytest.raises(StreamError) as info:
        for piece in pieces:
            for record in opener.feed(piece):
                out.append(record)
    return out, info.value


# -- records --------------------------------------------------------------------------------------------------

record_spec = st.one_of(
    st.tuples(st.just("D"), st.binary(max_size=300)),
    st.tuples(st.just("E"), st.integers(min_value=0, max_value=2 ** 32 - 1)),
    st.tuples(st.just("J"), st.dictionaries(st.text(max_size=8),
                                            st.one_of(st.integers(-10 ** 6, 10 ** 6), st.text(max_size=20),
                                                      st.booleans(), st.none()),
                                            max_size=4)),
)


def seal_specs(sealer, specs, finish):
    """The sealed bytes of *specs* and the ``(kind, payload)`` list an Opener must yield for them."""
    wire_bytes, expected = [], []
    for kind, value in specs:
        if kind == "D":
            wire_bytes.append(b"".join(sealer.data(value)))
            expected.append((DATA, value))
        elif kind == "E":
            wire_bytes.append(sealer.end(value))
            expected.append((END, value))
        else:
            wire_bytes.append(sealer.json(value))
            expected.append((JSON, value))
    if finish:
        wire_bytes.append(sealer.finish())
        expected.append((FINISH, None))
    return b"".join(wire_bytes), expected


def split(data, cuts):
    cuts = sorted(set(c for c in cuts if 0 < c < len(data)))
    bounds = [0] + cuts + [len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


@given(st.lists(record_spec, max_size=12), st.booleans(), st.data())
def test_round_trip_at_any_split(specs, finish, data):
    """Every record kind comes out of the Opener as sealed, whatever the chunk boundaries of the byte stream."""
    sealer, opener = pair()
    stream, expected = seal_specs(sealer, specs, finish)
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=max(len(stream), 1)), max_size=20))
    pieces = split(stream, cuts)
    assert b"".join(pieces) == stream
    assert feed_all(opener, pieces) == expected
    assert opener.buffered == 0
    assert opener.finished is finish


def test_round_trip_one_byte_at_a_time():
    """Fed one byte per call, every record still comes out once, in order, at the byte that completes it."""
    sealer, opener = pair()
    stream, expected = seal_specs(sealer, [("D", b"hello"), ("J", {"t": "file", "i": 0}), ("E", 7),
                                           ("D", b""), ("D", bytes(range(256)))], finish=True)
    out = []
    for i in range(len(stream)):
        got = list(opener.feed(stream[i:i + 1]))
        if got:
            out.extend(got)
            assert opener.buffered == 0  # a record is yielded only by the byte that completes it
    assert out == expected
    assert opener.finished


def test_largest_record_round_trips_and_data_parts_are_header_and_body():
    """A RECORD_MAX payload is accepted; ``data`` returns the header and the ciphertext separately."""
    sealer, opener = pair()
    payload = b"\xab" * RECORD_MAX
    header, body = sealer.data(payload)
    assert header == struct.pack(">Ic", RECORD_MAX + TAG, DATA) and len(body) == RECORD_MAX + TAG
    assert list(opener.feed(header + body)) == [(DATA, payload)]


# -- keys -----------------------------------------------------------------------------------------------------

def test_keys_are_deterministic_per_secret_and_differ_per_direction():
    """Both sides derive the same sid and keys from one secret; the two directions never share a key."""
    again = SessionKeys(bytes(SECRET))
    assert (again.sid, again.to_receiver, again.to_sender) == (KEYS.sid, KEYS.to_receiver, KEYS.to_sender)
    assert len(KEYS.sid) == 16 and len(KEYS.to_receiver) == 32 and len(KEYS.to_sender) == 32
    assert KEYS.to_receiver != KEYS.to_sender
    assert KEYS.sid not in (KEYS.to_receiver[:16], KEYS.to_sender[:16])
    assert KEYS.preamble == MAGIC + KEYS.sid and len(KEYS.preamble) == PREAMBLE
    other = SessionKeys(bytes([1]) + SECRET[1:])
    assert other.sid != KEYS.sid and other.to_receiver != KEYS.to_receiver and other.to_sender != KEYS.to_sender


def test_new_secrets_are_fresh():
    a, b = datastream.new_secret(), datastream.new_secret()
    assert len(a) == len(b) == datastream.SECRET_BYTES and a != b


@pytest.mark.parametrize("secret", [b"", b"x" * 31, b"x" * 33, "x" * 32, bytearray(32), None])
def test_bad_secrets_are_refused(secret):
    with pytest.raises(ValueError):
        SessionKeys(secret)


def test_a_record_sealed_for_one_direction_does_not_open_in_the_other():
    """A record the receiver sends cannot be played back to it as if the sender had sent it."""
    record = Sealer(KEYS.to_sender).json({"t": "complete"})
    out, error = feed_until_error(Opener(KEYS.to_receiver), [record])
    assert out == [] and error.code == "bad_record"


def test_another_sessions_record_does_not_open():
    record = Sealer(SessionKeys(b"\x07" * 32).to_receiver).data(b"x")
    out, error = feed_until_error(Opener(KEYS.to_receiver), [b"".join(record)])
    assert out == [] and error.code == "bad_record"


# -- tampering ------------------------------------------------------------------------------------------------

def three_records():
    sealer = Sealer(KEYS.to_receiver)
    return [b"".join(sealer.data(b"first record")), sealer.json({"t": "file", "i": 0, "d": "AAAA"}),
            sealer.end(0)]


# Bytes enough to complete a record whose length field was raised anywhere within range: a lengthened record can
# only fail once the bytes it claims have arrived (until then the Opener waits, as for any partial record).
TRAILER = b"\0" * (HEADER + RECORD_MAX + TAG)


@pytest.mark.parametrize("which", [0, 1, 2])
@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_any_tampered_byte_is_a_stream_error(which, mask):
    """Altering any one byte of a record (length, kind, ciphertext or tag) stops the stream at that record:
    the records before it come out, nothing of it or after it does, and the error is a StreamError."""
    records = three_records()
    clean = Opener(KEYS.to_receiver)
    expected = feed_all(clean, records)
    assert len(expected) == 3
    for position in range(len(records[which])):
        tampered = bytearray(records[which])
        tampered[position] ^= mask
        stream = b"".join(records[:which]) + bytes(tampered) + b"".join(records[which + 1:]) + TRAILER
        out, error = feed_until_error(Opener(KEYS.to_receiver), [stream])
        assert out == expected[:which], position
        assert isinstance(error, StreamError)


@given(st.data())
def test_tampering_anywhere_at_any_split_is_a_stream_error(data):
    """The same holds whatever the chunking of the tampered stream."""
    records = three_records()
    which = data.draw(st.integers(0, 2))
    position = data.draw(st.integers(0, len(records[which]) - 1))
    mask = data.draw(st.integers(1, 255))
    tampered = bytearray(records[which])
    tampered[position] ^= mask
    stream = b"".join(records[:which]) + bytes(tampered) + b"".join(records[which + 1:]) + TRAILER
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=10))
    out, _ = feed_until_error(Opener(KEYS.to_receiver), split(stream, cuts))
    assert out == feed_all(Opener(KEYS.to_receiver), records)[:which]


def test_truncated_tag_is_not_yielded():
    """A record missing its last byte is never yielded (the Opener waits for it)."""
    record = three_records()[0]
    opener = Opener(KEYS.to_receiver)
    assert list(opener.feed(record[:-1])) == []
    assert opener.buffered == len(record) - 1
    assert list(opener.feed(record[-1:])) == [(DATA, b"first record")]


@pytest.mark.parametrize("order", [
    [0, 0],  # replayed
    [0, 2],  # one dropped
    [1, 0],  # two swapped
    [0, 1, 1],  # the last one replayed
    [1],  # the first one dropped
])
def test_replayed_dropped_or_reordered_records_are_stream_errors(order):
    records = three_records()
    good = feed_all(Opener(KEYS.to_receiver), records)
    prefix = 0
    while prefix < len(order) and order[prefix] == prefix:
        prefix += 1
    out, error = feed_until_error(Opener(KEYS.to_receiver), [records[i] for i in order])
    assert out == good[:prefix]
    assert error.code == "bad_record"


@pytest.mark.parametrize("length", [RECORD_MAX + TAG + 1, 2 ** 32 - 1, 0, TAG - 1])
def test_out_of_range_length_fails_at_the_header(length):
    """A length above RECORD_MAX + TAG (or below a tag) is refused from the 5 header bytes alone: the Opener does
    not wait for (and buffer) megabytes first."""
    opener = Opener(KEYS.to_receiver)
    out, error = feed_until_error(opener, [struct.pack(">Ic", length, DATA)])
    assert out == []
    assert "out of range" in str(error)
    assert opener.buffered == HEADER


def test_header_split_before_the_length_check_buffers_only_the_header():
    opener = Opener(KEYS.to_receiver)
    header = struct.pack(">Ic", RECORD_MAX + TAG + 1, DATA)
    assert list(opener.feed(header[:4])) == []
    with pytest.raises(StreamError):
        list(opener.feed(header[4:]))


def test_unknown_kind_is_a_stream_error():
    """A record sealed under a kind outside D/E/J/Z is refused even though it authenticates."""
    sealer = Sealer(KEYS.to_receiver)
    out, error = feed_until_error(Opener(KEYS.to_receiver), [sealer.seal(b"X", b"payload")])
    assert out == [] and "unknown record kind" in str(error)


@pytest.mark.parametrize("payload", [b"", b"\0\0\0", b"\0\0\0\0\0"])
def test_malformed_end_record_is_a_stream_error(payload):
    out, error = feed_until_error(Opener(KEYS.to_receiver), [Sealer(KEYS.to_receiver).seal(END, payload)])
    assert out == [] and "end-of-file" in str(error)


@pytest.mark.parametrize("payload", [
    b"[1, 2]", b'"text"', b"42", b"null", b"true",  # valid JSON, not an object
    b"{", b"", b"{'a': 1}", b"\xff\xfe", b'{"a": 1} x', b"{\"a\": \"\xc3\xa9\"}",  # not (ASCII) JSON
    b'{"a": ' + b"1" * 5000 + b"}",  # an int past Python's digit limit
])
def test_json_record_must_hold_an_object(payload):
    out, error = feed_until_error(Opener(KEYS.to_receiver), [Sealer(KEYS.to_receiver).seal(JSON, payload)])
    assert out == []
    assert "JSON" in str(error)


def test_deeply_nested_json_record_is_a_stream_error():
    """A JSON record nested deeper than the interpreter's recursion limit is a StreamError like any bad JSON."""
    record = Sealer(KEYS.to_receiver).seal(JSON, b"[" * 100000)
    out, _ = feed_until_error(Opener(KEYS.to_receiver), [record])
    assert out == []


def test_record_after_finish_is_a_stream_error():
    """Nothing may follow Z: a record after it (even a valid next one) is refused, also in a later feed."""
    sealer = Sealer(KEYS.to_receiver)
    finish, after = sealer.finish(), b"".join(sealer.data(b"more"))
    out, error = feed_until_error(Opener(KEYS.to_receiver), [finish + after])
    assert out == [(FINISH, None)] and "after the end" in str(error)

    opener = Opener(KEYS.to_receiver)
    assert list(opener.feed(finish)) == [(FINISH, None)] and opener.finished
    out, error = feed_until_error(opener, [after[:3], after[3:]])
    assert out == []

    sealer = Sealer(KEYS.to_receiver)
    opener = Opener(KEYS.to_receiver)
    out, _ = feed_until_error(opener, [sealer.finish() + sealer.finish()])
    assert out == [(FINISH, None)]


def test_any_byte_after_finish_is_a_stream_error():
    opener = Opener(KEYS.to_receiver)
    assert list(opener.feed(Sealer(KEYS.to_receiver).finish())) == [(FINISH, None)]
    with pytest.raises(StreamError):
        list(opener.feed(b"x"))


@settings(max_examples=300)
@given(st.binary(max_size=2000), st.data())
def test_garbage_is_only_ever_a_stream_error(garbage, data):
    """Random bytes, in random pieces, yield nothing (they cannot authenticate) or raise StreamError only."""
    opener = Opener(KEYS.to_receiver)
    cuts = data.draw(st.lists(st.integers(0, len(garbage)), max_size=8))
    try:
        out = feed_all(opener, split(garbage, cuts))
    except StreamError:
        return
    assert out == []
    assert opener.buffered == len(garbage)


@given(st.binary(min_size=1, max_size=400), st.data())
def test_garbage_after_valid_records_is_only_a_stream_error(garbage, data):
    records = three_records()
    opener = Opener(KEYS.to_receiver)
    stream = b"".join(records) + garbage
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=8))
    out = []
    try:
        for piece in split(stream, cuts):
            out.extend(opener.feed(piece))
    except StreamError:
        pass
    assert out == feed_all(Opener(KEYS.to_receiver), records)


def test_buffer_stays_bounded_on_a_long_stream_fed_in_small_pieces():
    """A long valid stream fed in small pieces never makes the Opener hold more than one record plus a piece,
    and every record comes out."""
    sealer, opener = pair()
    payload = bytes(range(256)) * 16  # 4 KiB
    count = 300
    stream = b"".join(b"".join(sealer.data(payload)) for _ in range(count)) + sealer.finish()
    record_size = HEADER + len(payload) + TAG
    piece = 1000
    most, got = 0, 0
    for i in range(0, len(stream), piece):
        for kind, value in opener.feed(stream[i:i + piece]):
            if kind == DATA:
                assert value == payload
                got += 1
        most = max(most, opener.buffered)
    assert got == count and opener.finished and opener.buffered == 0
    assert most < record_size + piece
    assert most < 2 * record_size


def test_one_feed_with_many_records_leaves_nothing_buffered():
    sealer, opener = pair()
    stream = b"".join(b"".join(sealer.data(b"x" * 100)) for _ in range(1000))
    assert len(list(opener.feed(stream))) == 1000
    assert opener.buffered == 0


def test_json_records_are_compact_ascii():
    """The JSON a Sealer seals is ASCII (a non-ASCII string is escaped) and opens to the same object."""
    sealer, opener = pair()
    obj = {"message": "سلام \u202e", "n": [1, 2]}
    record = sealer.json(obj)
    assert list(opener.feed(record)) == [(JSON, obj)]
    plain = json.dumps(obj, ensure_ascii=True, separators=(",", ":")).encode("ascii")
    assert len(record) == HEADER + len(plain) + TAG


# -- reading straight into the opener (what a data connection's recv_into does) -----------------------------------

def read_into(opener, stream, most):
    """Plays ``recv_into``: each read puts at most *most* bytes of *stream* into ``space()``; returns the records
    and the size of every read."""
    out, sizes, at = [], [], 0
    while at < len(stream):
        room = opener.space()
        n = min(len(room), most, len(stream) - at)
        room[:n] = stream[at:at + n]
        opener.filled(n)
        at += n
        sizes.append(n)
        out.extend(opener.records())
    return out, sizes


@settings(max_examples=60, deadline=None)
@given(specs=st.lists(record_spec, max_size=8), finish=st.booleans(), most=st.integers(1, 5000))
def test_reading_into_space_round_trips(specs, finish, most):
    sealer, opener = pair()
    wire_bytes, expected = seal_specs(sealer, specs, finish)
    out, _ = read_into(opener, wire_bytes, most)
    assert out == expected and opener.buffered == 0


def test_space_ends_each_read_on_a_record_boundary():
    """With the socket full (reads as big as ``space()`` allows), every full data record arrives in one read of
    exactly its size: it is decrypted where it landed, never joined or moved."""
    sealer, opener = pair()
    stream = b"".join(b"".join(sealer.data(bytes([i]) * datastream.CHUNK)) for i in range(5)) + sealer.finish()
    out, sizes = read_into(opener, stream, 1 << 30)
    assert [bytes(value) for kind, value in out[:5]] == [bytes([i]) * datastream.CHUNK for i in range(5)]
    assert sizes[:5] == [datastream.STANDARD] * 5 and out[5] == (FINISH, None)


def test_a_record_bigger_than_the_buffer_grows_it():
    sealer, opener = pair()
    stream = sealer.json({"t": "file"}) + b"".join(sealer.data(b"\x07" * RECORD_MAX)) + sealer.json({"t": "x"})
    out, _ = read_into(opener, stream, 3 << 20)
    assert [kind for kind, _ in out] == [JSON, DATA, JSON] and bytes(out[1][1]) == b"\x07" * RECORD_MAX


def test_a_bad_header_in_the_buffer_fails_space_too():
    """Once a record's header is in and its length is out of range, asking where to read next is a StreamError
    (the data connection drops the link), as opening it is."""
    _, opener = pair()
    room = opener.space()
    room[:HEADER] = struct.pack(">Ic", RECORD_MAX + TAG + 1, b"D")
    opener.filled(HEADER)
    with pytest.raises(StreamError):
        list(opener.records())
    with pytest.raises(StreamError):
        opener.space()


def test_data_into_seals_the_same_record_as_data():
    """``data_into`` (the sender's reused buffer) and ``data`` give identical records for identical state."""
    a, b = Sealer(KEYS.to_receiver), Sealer(KEYS.to_receiver)
    out = bytearray(datastream.STANDARD)
    for payload in (b"", b"x", bytes(range(256)) * 4096):
        view = a.data_into(payload, out)
        assert bytes(view) == b"".join(b.data(payload))
    fresh, opener = Sealer(KEYS.to_receiver), Opener(KEYS.to_receiver)
    assert [bytes(v) for _, v in opener.feed(bytes(fresh.data_into(b"last", out)))] == [b"last"]


def test_release_drops_the_buffer_and_the_opener_still_works():
    """A finished session releases its opener's buffer (finished transfers stay listed for a while)."""
    sealer, opener = pair()
    assert list(opener.feed(sealer.json({"n": 1}))) == [(JSON, {"n": 1})]
    opener.release()
    assert opener.buffered == 0 and len(opener._buf) == 0
    assert list(opener.feed(sealer.json({"n": 2}))) == [(JSON, {"n": 2})]
