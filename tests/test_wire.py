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


# -- file transfer frames ----------------------------------------------------------------------------------------

TID = "0123456789abcdef" * 2
RID = "fedcba9876543210" * 2
HASH = "ab" * 32
SECRET = "A" * 21 + "_-" + "z" * 20  # 43 url-safe base64 characters: 32 bytes without padding
OFFER = {"t": "offer", "tid": TID, "items": [{"path": "dir/a.txt", "size": 12, "hash": HASH},
                                             {"path": "empty", "size": 0, "hash": HASH}]}
ACCEPT = {"t": "accept", "tid": TID, "secret": SECRET, "have": [0, 0]}
LISTING = {"t": "listing", "rid": RID, "items": [{"name": "docs", "type": "dir"},
                                                 {"name": "a.txt", "type": "file", "size": 3}]}


@pytest.mark.parametrize("frame", [
    OFFER,
    dict(OFFER, rid=RID),
    dict(OFFER, items=[{"path": "x" * 4096, "size": wire.MAX_SIZE, "hash": HASH}]),
    ACCEPT,
    dict(ACCEPT, have=[]),
    dict(ACCEPT, have=[wire.MAX_SIZE, 5]),
    {"t": "reject", "tid": TID, "code": "rejected", "message": "no thanks"},
    {"t": "cancel", "tid": TID, "code": "cancelled", "message": "changed my mind"},
    {"t": "ls", "rid": RID, "path": ""},
    {"t": "ls", "rid": RID, "path": "docs/sub"},
    LISTING,
    dict(LISTING, items=[]),
    dict(LISTING, truncated=True),
    {"t": "get", "rid": RID, "path": "docs/a.txt"},
])
def test_valid_transfer_frames_round_trip(frame):
    """offer/accept/reject/cancel/ls/listing/get frames encode to one line and decode unchanged."""
    line = wire.encode(frame)
    assert b"\n" not in line
    assert wire.decode(line) == frame


def test_item_count_limit(monkeypatch):
    """An offer or listing holds up to MAX_ITEMS entries (read at call time; lowered here so the line fits)."""
    monkeypatch.setattr(wire, "MAX_ITEMS", 5)
    items = [{"path": "f%d" % i, "size": 1, "hash": HASH} for i in range(6)]
    entries = [{"name": "f%d" % i, "type": "file", "size": 1} for i in range(6)]
    assert wire.decode(wire.encode(dict(OFFER, items=items[:5])))["items"] == items[:5]
    assert wire.decode(wire.encode(dict(LISTING, items=entries[:5])))["items"] == entries[:5]
    assert wire.decode(wire.encode(dict(ACCEPT, have=[0] * 5)))["have"] == [0] * 5
    for frame, ref in ((dict(OFFER, items=items), TID), (dict(LISTING, items=entries), RID),
                       (dict(ACCEPT, have=[0] * 6), TID)):
        with pytest.raises(wire.FrameError) as info:
            wire.decode(wire.encode(frame))
        assert (info.value.code, info.value.ref) == ("bad_frame", ref)


def _item(**changes):
    item = {"path": "a.txt", "size": 1, "hash": HASH}
    item.update(changes)
    return {k: v for k, v in item.items() if v is not None}


# (frame, the ref the error must carry); None where no valid tid/rid exists to refer to.
BAD_TRANSFER_FRAMES = [
    ({"t": "offer", "items": OFFER["items"]}, None),
    (dict(OFFER, tid="XYZ"), None),
    (dict(OFFER, tid=5), None),
    (dict(OFFER, tid=TID.upper()), None),
    (dict(OFFER, rid="bad"), TID),
    (dict(OFFER, items=[]), TID),
    (dict(OFFER, items="a.txt"), TID),
    (dict(OFFER, items={"path": "a.txt"}), TID),
    (dict(OFFER, items=["a.txt"]), TID),
    (dict(OFFER, items=[_item(hash="AB" * 32)]), TID),
    (dict(OFFER, items=[_item(hash="ab" * 31)]), TID),
    (dict(OFFER, items=[_item(hash=None)]), TID),
    (dict(OFFER, items=[_item(size=-1)]), TID),
    (dict(OFFER, items=[_item(size=wire.MAX_SIZE + 1)]), TID),
    (dict(OFFER, items=[_item(size=1.5)]), TID),
    (dict(OFFER, items=[_item(size=True)]), TID),
    (dict(OFFER, items=[_item(size="1")]), TID),
    (dict(OFFER, items=[_item(path="x" * 4097)]), TID),
    (dict(OFFER, items=[_item(path=None)]), TID),
    (dict(OFFER, items=[_item(), _item(path=7)]), TID),
    ({"t": "accept", "secret": SECRET, "have": [0]}, None),
    (dict(ACCEPT, secret="A" * 42), TID),
    (dict(ACCEPT, secret="A" * 44), TID),
    (dict(ACCEPT, secret="A" * 42 + "="), TID),
    (dict(ACCEPT, secret="A" * 42 + "+"), TID),
    (dict(ACCEPT, secret=None), TID),
    (dict(ACCEPT, have=[-1]), TID),
    (dict(ACCEPT, have=[wire.MAX_SIZE + 1]), TID),
    (dict(ACCEPT, have=[True]), TID),
    (dict(ACCEPT, have=[1.0]), TID),
    (dict(ACCEPT, have=["1"]), TID),
    (dict(ACCEPT, have=[0] * (wire.MAX_ITEMS + 1)), TID),
    (dict(ACCEPT, have=0), TID),
    (dict(ACCEPT, have=None), TID),
    ({"t": "reject", "code": "rejected", "message": "x"}, None),
    ({"t": "reject", "tid": TID, "message": "x"}, TID),
    ({"t": "reject", "tid": TID, "code": "c" * 65, "message": "x"}, TID),
    ({"t": "reject", "tid": TID, "code": "rejected"}, TID),
    ({"t": "cancel", "tid": TID, "code": "cancelled", "message": "m" * 1001}, TID),
    ({"t": "cancel", "tid": "nope", "code": "cancelled", "message": "x"}, None),
    ({"t": "ls", "path": ""}, None),
    ({"t": "ls", "rid": "r", "path": ""}, None),
    ({"t": "ls", "rid": RID}, RID),
    ({"t": "ls", "rid": RID, "path": "x" * 4097}, RID),
    ({"t": "get", "rid": RID, "path": 5}, RID),
    ({"t": "get", "path": "a.txt"}, None),
    ({"t": "listing", "items": []}, None),
    (dict(LISTING, items=None), RID),
    (dict(LISTING, items="docs"), RID),
    (dict(LISTING, items=[{"name": "a", "type": "dir"}] * (wire.MAX_ITEMS + 1)), RID),
    (dict(LISTING, items=[5]), RID),
    (dict(LISTING, items=[{"name": "a", "type": "link"}]), RID),
    (dict(LISTING, items=[{"name": "a", "type": "FILE"}]), RID),
    (dict(LISTING, items=[{"name": "a"}]), RID),
    (dict(LISTING, items=[{"name": "", "type": "file"}]), RID),
    (dict(LISTING, items=[{"name": "a", "type": "file", "size": -1}]), RID),
    (dict(LISTING, items=[{"type": "file", "size": 1}]), RID),
]


def _frame_of(case):
    return case.values[0] if hasattr(case, "values") else case[0]


@pytest.mark.parametrize("frame", [_frame_of(case) for case in BAD_TRANSFER_FRAMES])
def test_bad_transfer_frames_are_bad_frame_errors(frame):
    """Every malformed field of a transfer frame is a FrameError with code bad_frame."""
    with pytest.raises(wire.FrameError) as info:
        wire.decode(wire.encode(frame))
    assert info.value.code == "bad_frame"


@pytest.mark.parametrize("frame, ref", BAD_TRANSFER_FRAMES)
def test_bad_transfer_frames_name_the_transfer_they_refuse(frame, ref):
    """The error carries the frame's tid/rid when that one was valid, so the peer can fail the right transfer
    or request instead of waiting for an answer forever."""
    with pytest.raises(wire.FrameError) as info:
        wire.decode(wire.encode(frame))
    assert info.value.ref == ref
