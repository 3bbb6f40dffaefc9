"""The peer line protocol codec: valid frames round-trip, everything else is a FrameError with a code."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pd.core import wire

MSG = {"t": "msg", "id": "a" * 32, "from": "alice", "seq": 1, "ts": 5, "body": "سلام 👋 \u202e"}


@pytest.mark.parametrize("frame", [
    wire.hello("alice", "p2pd/0.1.0"),
    MSG,
    dict(MSG, room="G1"),
    {"t": "ack", "id": "b" * 32},
    {"t": "ping", "n": 3},
    {"t": "pong", "n": 3},
    wire.error("bad_frame", "nope", "c" * 32),
    {"t": "bye"},
])
def test_valid_frames_round_trip(frame):
    """Every frame type encodes to one line and decodes to the same dict."""
    line = wire.encode(frame)
    assert b"\n" not in line
    assert wire.decode(line) == frame


@pytest.mark.parametrize("line, code", [
    (b"not json", "bad_frame"),
    (b"[1]", "bad_frame"),
    (b'{"t": "nope"}', "unknown_frame"),
    (b'{"t": 5}', "unknown_frame"),
    (b'{"t": "msg"}', "bad_frame"),
    (b'{"t": "ack", "id": "XYZ"}', "bad_frame"),
    (b'{"t": "hello", "v": "1", "name": "alice"}', "bad_frame"),
    (b'{"t": "hello", "v": 1, "name": "Alice"}', "bad_frame"),
    (b'{"t": "msg", "id": "' + b"a" * 32 + b'", "from": "alice", "seq": 0, "ts": 1, "body": "x"}', "bad_frame"),
    (b'{"t": "msg", "id": "' + b"a" * 32 + b'", "from": "alice", "seq": true, "ts": 1, "body": "x"}', "bad_frame"),
    (b'{"t": "msg", "id": "' + b"a" * 32 + b'", "from": "alice", "seq": 1, "ts": 1, "body": "\\ud800"}',
     "bad_frame"),
    (b'{"t": "ping", "n": NaN}', "bad_frame"),
    (b"{" * 100 + b"}" * 100, "bad_frame"),
    (b"x" * (wire.MAX_LINE + 1), "line_too_long"),
])
def test_bad_lines_are_frame_errors(line, code):
    """Malformed, unknown or incomplete frames are refused with a code the peer is told."""
    with pytest.raises(wire.FrameError) as info:
        wire.decode(line)
    assert info.value.code == code


def test_body_limit():
    """A body over MAX_BODY bytes of UTF-8 is refused, one at the limit is accepted."""
    at_limit = dict(MSG, body="x" * wire.MAX_BODY)
    assert wire.decode(wire.encode(at_limit))["body"] == at_limit["body"]
    with pytest.raises(wire.FrameError):
        wire.decode(wire.encode(dict(MSG, body="x" * (wire.MAX_BODY + 1))))


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(data):
    """Any bytes decode to a frame or raise FrameError, nothing else."""
    try:
        wire.decode(data)
    except wire.FrameError:
        pass


@given(st.text(max_size=200))
def test_any_text_body_round_trips(body):
    """Any Unicode text without lone surrogates survives encoding byte for byte."""
    try:
        body.encode("utf-8")
    except UnicodeEncodeError:
        return
    frame = dict(MSG, body=body)
    assert wire.decode(wire.encode(frame))["body"] == body


def test_batched_ack_round_trips():
    """Several acknowledgements travel in one frame; one id still uses the single form."""
    ids = ["%032x" % i for i in range(5)]
    frames = wire.acks(ids)
    assert len(frames) == 1 and wire.ack_ids(wire.decode(wire.encode(frames[0]))) == ids
    single = wire.acks(ids[:1])
    assert single == [{"t": "ack", "id": ids[0]}] and wire.ack_ids(single[0]) == ids[:1]


@pytest.mark.parametrize("frame", [
    {"t": "ack"},
    {"t": "ack", "ids": []},
    {"t": "ack", "ids": ["XYZ"]},
    {"t": "ack", "ids": ["a" * 32] * 1001},
    {"t": "ack", "id": "a" * 32, "ids": ["b" * 32]},
    {"t": "ack", "ids": "a" * 32},
])
def test_bad_batched_acks_are_refused(frame):
    """An ack with no ids, too many, malformed ones, or both forms at once is a FrameError."""
    with pytest.raises(wire.FrameError):
        wire.decode(wire.encode(frame))
