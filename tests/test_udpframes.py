"""The UDP stream's frames (p2pd.core.udpframes, issue 14): every frame survives encode/decode, varints at each
size boundary, ACK ranges as RFC 9000 draws them, and malformed bytes are a FrameError, never a crash."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pd.core import udpframes as uf


@pytest.mark.parametrize("value, size", [(0, 1), (63, 1), (64, 2), (16383, 2), (16384, 4), ((1 << 30) - 1, 4),
                                         (1 << 30, 8), (uf.MAX_VARINT, 8)])
def test_varints_take_the_size_rfc_9000_gives_them(value, size):
    data = uf.encode_varint(value)
    assert len(data) == size and uf.decode_varint(data, 0) == (value, size)


def test_the_rfc_9000_examples_decode():
    assert uf.decode_varint(bytes.fromhex("c2197c5eff14e88c"), 0) == (151288809941952652, 8)
    assert uf.decode_varint(bytes.fromhex("9d7f3e7d"), 0) == (494878333, 4)
    assert uf.decode_varint(bytes.fromhex("7bbd"), 0) == (15293, 2)
    assert uf.decode_varint(bytes.fromhex("25"), 0) == (37, 1)


def test_ack_ranges_are_encoded_with_gaps_as_rfc_9000_does():
    ack = uf.Ack(((20, 25), (10, 15), (3, 3)), delay_us=800)
    data = uf.encode(ack)
    # largest 25, delay 800, 2 more ranges, first length 5; gap 20 - 15 - 2 = 3, length 5; gap 10 - 3 - 2 = 5, 0
    assert data == b"\x02" + b"".join(uf.encode_varint(v) for v in (25, 800, 2, 5, 3, 5, 5, 0))
    assert uf.decode(data) == [ack]


@st.composite
def ack_frames(draw):
    ranges, high = [], draw(st.integers(0, 1 << 40))
    for _ in range(draw(st.integers(1, 20))):
        length = draw(st.integers(0, min(high, 1000)))
        ranges.append((high - length, high))
        high = high - length - 2 - draw(st.integers(0, 1000))
        if high < 0:
            break
    return uf.Ack(tuple(ranges), draw(st.integers(0, 1 << 30)))


frames = st.one_of(
    st.just(uf.Ping()), ack_frames(),
    st.builds(uf.Stream, st.integers(0, 1 << 50), st.binary(max_size=1200)),
    st.builds(uf.Credit, st.integers(0, uf.MAX_VARINT)),
    st.builds(uf.Challenge, st.binary(min_size=8, max_size=8)),
    st.builds(uf.Response, st.binary(min_size=8, max_size=8)),
    st.builds(uf.Done, st.integers(0, 1 << 50)),
    st.builds(uf.Close, st.integers(0, 1 << 20), st.text(max_size=50)))


@settings(max_examples=300, deadline=None)
@given(st.lists(frames, max_size=8), st.integers(0, 30))
def test_every_frame_survives_a_round_trip_padding_included(items, padding):
    data = b"".join(uf.encode(f) for f in items) + b"\x00" * padding
    assert uf.decode(data) == items


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_decode_or_raise_frame_error(data):
    try:
        for frame in uf.decode(data):
            if isinstance(frame, uf.Ack):
                assert all(0 <= a <= b for a, b in frame.ranges)
            if isinstance(frame, uf.Stream):
                assert len(frame.data) <= len(data)
    except uf.FrameError:
        pass


@pytest.mark.parametrize("data", [b"\x08\x05\x0a" + b"x" * 3, b"\x02\x05\x00\x00\x06", b"\x1a\x01\x02", b"\xff",
                                  b"\x02\x05\x00\x01\x01\x05\x00", b"\x1d\x01\x09abc", b"\x08\x40"])
def test_malformed_frames_are_refused(data):
    with pytest.raises(uf.FrameError):
        uf.decode(data)


def test_impossible_frames_are_not_encoded():
    for bad in (uf.Ack(()), uf.Ack(((5, 9), (7, 8))), uf.Ack(((5, 9), (3, 4))), uf.Challenge(b"short")):
        with pytest.raises(ValueError):
            uf.encode(bad)
