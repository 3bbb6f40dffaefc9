"""The frames of the UDP stream (issue 14), pure: what one sealed datagram carries, encoded and decoded.

A datagram's plaintext is a sequence of frames, each a type byte then its fields as QUIC varints (RFC 9000
section 16: 1, 2, 4 or 8 bytes, the top two bits of the first byte say which):

========  ====  ======================================================================
frame     type  fields
========  ====  ======================================================================
PADDING   0x00  (one byte; a run of them fills the datagram to its size)
PING      0x01  (asks for an ACK)
ACK       0x02  largest, delay (us), count of further ranges, first range length - 1,
                then per range: gap - 1, length - 1 (RFC 9000's ACK, without ECN)
STREAM    0x08  offset, length, then *length* bytes of data
CREDIT    0x10  the offset up to which the receiver takes data (flow control)
CHALLENGE 0x1a  8 bytes: prove this path (answered by RESPONSE with the same bytes)
RESPONSE  0x1b  8 bytes
DONE      0x1c  the stream's final size (the sender has sent everything)
CLOSE     0x1d  a code, then a reason of that many bytes (UTF-8): the transfer ends
========  ====  ======================================================================

:func:`decode` raises :class:`FrameError` for anything malformed (an unknown type, a truncated field, ranges that
go below 0, data past the datagram): the caller drops the datagram and counts it, never answers it."""

from dataclasses import dataclass

MAX_VARINT = (1 << 62) - 1


class FrameError(ValueError):
    pass


def encode_varint(value: int) -> bytes:
    if value < 0 or value > MAX_VARINT:
        raise ValueError("varint out of range: %r" % value)
    if value < 1 << 6:
        return bytes((value,))
    if value < 1 << 14:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 1 << 30:
        return (value | 0x80000000).to_bytes(4, "big")
    return (value | 0xC000000000000000).to_bytes(8, "big")


def decode_varint(data, pos: int):
    """``(value, next position)`` of the varint at *pos* of *data*; FrameError if it is cut short."""
    if pos >= len(data):
        raise FrameError("a varint is cut short")
    first = data[pos]
    size = 1 << (first >> 6)
    if pos + size > len(data):
        raise FrameError("a varint is cut short")
    value = first & 0x3F
    for byte in data[pos + 1:pos + size]:
        value = (value << 8) | byte
    return value, pos + size


@dataclass(slots=True)
class Ping:
    pass


@dataclass(slots=True)
class Ack:
    ranges: tuple  # ((first, last), ...) of acknowledged packet numbers, highest first, disjoint
    delay_us: int = 0


@dataclass(slots=True)
class Stream:
    offset: int
    data: bytes


@dataclass(slots=True)
class Credit:
    limit: int


@dataclass(slots=True)
class Challenge:
    token: bytes


@dataclass(slots=True)
class Response:
    token: bytes


@dataclass(slots=True)
class Done:
    size: int


@dataclass(slots=True)
class Close:
    code: int
    reason: str = ""


def _encode_ack(frame):
    ranges = frame.ranges
    if not ranges:
        raise ValueError("an ACK acknowledges at least one packet")
    out = [encode_varint(ranges[0][1]), encode_varint(frame.delay_us), encode_varint(len(ranges) - 1),
           encode_varint(ranges[0][1] - ranges[0][0])]
    low = ranges[0][0]
    for first, last in ranges[1:]:
        if not 0 <= first <= last < low - 1:
            raise ValueError("ACK ranges must be disjoint, not adjacent, and highest first: %r" % (ranges,))
        out += [encode_varint(low - last - 2), encode_varint(last - first)]
        low = first
    return b"\x02" + b"".join(out)


def encode(frame) -> bytes:
    """The bytes of one frame."""
    if isinstance(frame, Ping):
        return b"\x01"
    if isinstance(frame, Ack):
        return _encode_ack(frame)
    if isinstance(frame, Stream):
        return b"\x08" + encode_varint(frame.offset) + encode_varint(len(frame.data)) + bytes(frame.data)
    if isinstance(frame, Credit):
        return b"\x10" + encode_varint(frame.limit)
    if isinstance(frame, (Challenge, Response)):
        if len(frame.token) != 8:
            raise ValueError("a path challenge carries 8 bytes")
        return (b"\x1a" if isinstance(frame, Challenge) else b"\x1b") + frame.token
    if isinstance(frame, Done):
        return b"\x1c" + encode_varint(frame.size)
    if isinstance(frame, Close):
        reason = frame.reason.encode("utf-8")[:200]
        return b"\x1d" + encode_varint(frame.code) + encode_varint(len(reason)) + reason
    raise TypeError("not a frame: %r" % (frame,))


def _decode_ack(data, pos):
    largest, pos = decode_varint(data, pos)
    delay, pos = decode_varint(data, pos)
    count, pos = decode_varint(data, pos)
    first_len, pos = decode_varint(data, pos)
    if first_len > largest or count > 256:
        raise FrameError("an ACK range goes below packet 0, or has too many ranges")
    ranges = [(largest - first_len, largest)]
    low = largest - first_len
    for _ in range(count):
        gap, pos = decode_varint(data, pos)
        length, pos = decode_varint(data, pos)
        last = low - gap - 2
        first = last - length
        if first < 0:
            raise FrameError("an ACK range goes below packet 0")
        ranges.append((first, last))
        low = first
    return Ack(tuple(ranges), delay), pos


def _decode_one(data, pos):
    kind = data[pos]
    pos += 1
    if kind == 0x01:
        return Ping(), pos
    if kind == 0x02:
        return _decode_ack(data, pos)
    if kind == 0x08:
        if pos + 6 <= len(data) and data[pos] >> 6 == 2 and data[pos + 4] >> 6 == 1:  # the usual sizes, inline
            offset = int.from_bytes(data[pos:pos + 4], "big") & 0x3FFFFFFF
            length = int.from_bytes(data[pos + 4:pos + 6], "big") & 0x3FFF
            pos += 6
        else:
            offset, pos = decode_varint(data, pos)
            length, pos = decode_varint(data, pos)
        if pos + length > len(data) or offset + length > MAX_VARINT:
            raise FrameError("STREAM data runs past the datagram")
        return Stream(offset, bytes(data[pos:pos + length])), pos + length
    if kind == 0x10:
        limit, pos = decode_varint(data, pos)
        return Credit(limit), pos
    if kind in (0x1a, 0x1b):
        if pos + 8 > len(data):
            raise FrameError("a path challenge is cut short")
        token = bytes(data[pos:pos + 8])
        return (Challenge(token) if kind == 0x1a else Response(token)), pos + 8
    if kind == 0x1c:
        size, pos = decode_varint(data, pos)
        return Done(size), pos
    if kind == 0x1d:
        code, pos = decode_varint(data, pos)
        length, pos = decode_varint(data, pos)
        if pos + length > len(data):
            raise FrameError("a CLOSE reason runs past the datagram")
        return Close(code, bytes(data[pos:pos + length]).decode("utf-8", "replace")), pos + length
    raise FrameError("unknown frame type 0x%02x" % kind)


def decode(data) -> list:
    """The frames of one datagram's plaintext, in order (PADDING skipped); FrameError if any is malformed."""
    frames, pos = [], 0
    while pos < len(data):
        if data[pos] == 0x00:
            pos += 1
            continue
        frame, pos = _decode_one(data, pos)
        frames.append(frame)
    return frames
