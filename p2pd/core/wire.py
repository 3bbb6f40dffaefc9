"""The peer-to-peer line protocol, v1: one JSON object per line, over TLS with both sides' keys pinned.

Both sides open with ``hello``; everything else waits for it. Frames (``t`` is the type)::

    {"t": "hello", "v": 1, "name": "alice", "agent": "p2pd/0.1.0", "udp": 4001}   (udp: our UDP port, optional)
    {"t": "msg", "id": ID, "from": "alice", "seq": 7, "ts": MS, "body": "text"}      one chat message
    {"t": "msg", ..., "room": "G1"}                                                   a room message
    {"t": "ack", "id": ID}                                   stored in the receiver's history: delivered
    {"t": "ack", "ids": [ID, ...]}                           the same for several (up to MAX_ACK_IDS) at once
    {"t": "ping", "n": 3} / {"t": "pong", "n": 3}            keepalive (idle links are probed, dead ones closed)
    {"t": "error", "code": "bad_frame", "message": "...", "ref": ID?}
    {"t": "bye"}
    {"t": "room", "room": "G1", "from": "alice", "change": "joined"|"left"}   announced to the room's members

File transfers (:mod:`p2pd.peer.files`; the bytes go on a data connection, :mod:`p2pd.core.datastream`)::

    {"t": "offer", "tid": ID, "items": [{"path": "a/b.txt", "size": 12, "hash": HEX64}, ...], "rid": ID?}
        an item that is an image adds "image": {"format": "JPEG", "width": W, "height": H} (or "format" and
        "error": TEXT); the offer may add "previews": [{"i": ITEM INDEX, "jpeg": B64}] (at most 2, a JPEG of
        at most 256 px and 16 KiB each). The receiver checks these itself (:mod:`p2pd.peer.files.previews`):
        ill-formed ones are dropped, the offer is not refused for them
    {"t": "accept", "tid": ID, "secret": B64, "have": [bytes already verified, one per item]}
    {"t": "reject", "tid": ID, "code": "rejected", "message": "..."}
    {"t": "cancel", "tid": ID, "code": "cancelled", "message": "..."}       either side gives up
    {"t": "ls", "rid": ID, "path": "dir"} -> {"t": "listing", "rid": ID, "items": [{"name", "size", "type"}]}
    {"t": "get", "rid": ID, "path": "dir/file"} -> an offer with that ``rid`` (or an error with ``ref``)

``id`` is 32 lowercase hex digits chosen by the sender; ``seq`` counts the sender's messages to this recipient
from 1, so the receiver can keep per-sender order and notice a gap (a message still in the mailbox). Unknown
frame types get an ``error`` reply, never a crash; a frame that is not JSON, too long, or misses a field is a
:class:`FrameError` whose message is what goes back to the peer.
"""

import json
import re

from p2pd.core import jsonbody
from p2pd.errors import BadRequest

VERSION = 1
TRANSPORTS = ("tcp", "udp")  # what may carry a transfer's bytes (an offer's and a get's "transport")
MAX_LINE = 64 * 1024  # longest line accepted, in bytes
MAX_BODY = 16 * 1024  # bytes of UTF-8 text in one message (it must also fit a sealed mailbox deposit)
MAX_ACK_IDS = 1000  # ids in one ack frame (1000 x 35 bytes fits a line easily)
ID_RE = re.compile(r"[0-9a-f]{32}")
NAME_RE = re.compile(r"[a-z0-9_-]{3,32}")
ROOM_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")


class FrameError(ValueError):
    """A frame we cannot accept; ``code`` and ``str(self)`` go back to the peer in an ``error`` frame."""

    def __init__(self, message, code="bad_frame", ref=None):
        super().__init__(message)
        self.code = code
        self.ref = ref


def _ref(f):
    for key in ("id", "tid", "rid"):
        if isinstance(f.get(key), str) and ID_RE.fullmatch(f[key]):
            return f[key]
    return None


def _want(frame, field, kind, check=None, optional=False):
    value = frame.get(field)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise FrameError("field %r of a %s frame must be %s" % (field, frame.get("t"), kind.__name__),
                         ref=_ref(frame))
    if check is not None and not check(value):
        raise FrameError("field %r of a %s frame is invalid" % (field, frame.get("t")),
                         ref=_ref(frame))
    return value


def _hello(f):
    _want(f, "v", int)
    _want(f, "name", str, NAME_RE.fullmatch)
    _want(f, "agent", str, lambda a: len(a) <= 100, optional=True)
    _want(f, "udp", int, lambda port: 0 < port < 65536, optional=True)


def _text_ok(text, limit):
    try:
        return len(text.encode("utf-8")) <= limit
    except UnicodeEncodeError:  # lone surrogates from "\ud800" escapes
        return False


def _msg(f):
    _want(f, "id", str, ID_RE.fullmatch)
    _want(f, "from", str, NAME_RE.fullmatch)
    _want(f, "seq", int, lambda n: 0 < n < 2 ** 53)
    _want(f, "ts", int, lambda n: 0 <= n < 2 ** 53)
    _want(f, "body", str, lambda b: _text_ok(b, MAX_BODY))
    _want(f, "room", str, ROOM_RE.fullmatch, optional=True)


def _ack(f):
    """Either ``id`` (one message) or ``ids`` (a non-empty list of them), never both."""
    if "ids" not in f:
        _want(f, "id", str, ID_RE.fullmatch)
        return
    if "id" in f:
        raise FrameError("an ack frame has either 'id' or 'ids', not both")
    ids = f["ids"]
    if not isinstance(ids, list) or not 0 < len(ids) <= MAX_ACK_IDS:
        raise FrameError("field 'ids' of an ack frame must be a list of 1 to %d ids" % MAX_ACK_IDS)
    fullmatch = ID_RE.fullmatch
    for msg_id in ids:
        if not isinstance(msg_id, str) or not fullmatch(msg_id):
            raise FrameError("field 'ids' of an ack frame holds an invalid id")


def _ping(f):
    _want(f, "n", int, lambda n: 0 <= n < 2 ** 53)


def _error(f):
    _want(f, "code", str, lambda c: len(c) <= 64)
    _want(f, "message", str, lambda m: len(m) <= 1000)


def _room_event(f):
    _want(f, "room", str, ROOM_RE.fullmatch)
    _want(f, "from", str, NAME_RE.fullmatch)
    _want(f, "change", str, lambda c: c in ("joined", "left"))


MAX_ITEMS = 1000  # files in one offer (a larger tree is sent as several offers)
FILE_FRAMES = frozenset(("offer", "accept", "reject", "cancel", "ls", "listing", "get"))  # the kinds files use
MAX_SIZE = 1 << 50  # bytes in one file
HASH_RE = re.compile(r"[0-9a-f]{64}")
SECRET_RE = re.compile(r"[A-Za-z0-9_-]{43}")


def _path_ok(p):
    return 0 < len(p) <= 4096


def _items(f, field, check_item):
    items = f.get(field)
    if not isinstance(items, list) or len(items) > MAX_ITEMS:
        raise FrameError("field %r of a %s frame must be a list of at most %d entries" % (field, f["t"], MAX_ITEMS),
                         ref=_ref(f))
    for item in items:
        if not isinstance(item, dict):
            raise FrameError("field %r of a %s frame must hold objects" % (field, f["t"]), ref=_ref(f))
        try:
            check_item(dict(item, t=f["t"]))
        except FrameError as e:
            raise FrameError(str(e), e.code, _ref(f)) from None
    return items


def _offer_item(item):
    _want(item, "path", str, lambda p: len(p) <= 4096)  # "" is refused as bad_name by the receiver
    _want(item, "size", int, lambda n: 0 <= n <= MAX_SIZE)
    _want(item, "hash", str, HASH_RE.fullmatch)


def _transport(f):
    _want(f, "transport", str, lambda t: t in TRANSPORTS, optional=True)


def _offer(f):
    _want(f, "tid", str, ID_RE.fullmatch)
    _want(f, "rid", str, ID_RE.fullmatch, optional=True)
    _transport(f)
    if not _items(f, "items", _offer_item):
        raise FrameError("an offer needs at least one file", ref=f["tid"])


def _accept(f):
    _want(f, "tid", str, ID_RE.fullmatch)
    _want(f, "secret", str, SECRET_RE.fullmatch)
    have = _want(f, "have", list)
    if len(have) > MAX_ITEMS or not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= MAX_SIZE
                                        for n in have):
        raise FrameError("field 'have' of an accept frame must list byte counts", ref=f["tid"])


def _reject(f):
    _want(f, "tid", str, ID_RE.fullmatch)
    _error(f)


def _ls(f):
    _want(f, "rid", str, ID_RE.fullmatch)
    _want(f, "path", str, lambda p: len(p) <= 4096)


def _get(f):
    _ls(f)
    _transport(f)


def _listing_item(item):
    _want(item, "name", str, _path_ok)
    _want(item, "type", str, lambda t: t in ("file", "dir"))
    _want(item, "size", int, lambda n: 0 <= n <= MAX_SIZE, optional=True)


def _listing(f):
    _want(f, "rid", str, ID_RE.fullmatch)
    _items(f, "items", _listing_item)


CHECKS = {"hello": _hello, "msg": _msg, "ack": _ack, "ping": _ping, "pong": _ping, "error": _error,
          "bye": lambda f: None, "offer": _offer, "accept": _accept, "reject": _reject, "cancel": _reject,
          "ls": _ls, "listing": _listing, "get": _get, "room": _room_event}


# jsonbody.loads_object's rules, made cheaper for the many short lines of a link: one decoder built once (json.loads
# with hooks builds one per call), and the character-by-character depth scan only for a line with enough brackets
# that it could nest too deep (the count of "{" and "[" bounds the depth).
_DECODER = json.JSONDecoder(
    parse_constant=jsonbody._no_constants,
    object_pairs_hook=jsonbody._no_duplicates,
    parse_int=jsonbody._bounded_int,
    parse_float=jsonbody._bounded_float,
)


def _loads_object(line) -> dict:
    try:
        text = bytes(line).decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("body is not valid UTF-8") from None
    if text.count("{") + text.count("[") > jsonbody.MAX_DEPTH and not jsonbody._depth_ok(text):
        raise BadRequest("JSON nested deeper than %d levels" % jsonbody.MAX_DEPTH)
    if text.startswith("\ufeff"):
        raise BadRequest("malformed JSON: Unexpected UTF-8 BOM (decode using utf-8-sig): line 1 column 1 (char 0)")
    try:
        obj = _DECODER.decode(text)
    except BadRequest:
        raise
    except (ValueError, RecursionError) as e:
        raise BadRequest("malformed JSON: %s" % (e,)) from None
    if "\\u" in text:
        jsonbody._check_strings(obj)
    if not isinstance(obj, dict):
        raise BadRequest("expected a JSON object")
    return obj


def decode(line: bytes) -> dict:
    """Parse and validate one line (without its delimiter) into a frame dict."""
    if len(line) > MAX_LINE:
        raise FrameError("line longer than %d bytes" % MAX_LINE, code="line_too_long")
    try:
        frame = _loads_object(line)
    except BadRequest as e:
        raise FrameError(e.message) from None
    kind = frame.get("t")
    check = CHECKS.get(kind) if isinstance(kind, str) else None
    if check is None:
        raise FrameError("unknown frame type %r" % (kind,), code="unknown_frame")
    check(frame)
    return frame


def encode(frame: dict) -> bytes:
    """One frame as a line, without the delimiter."""
    return jsonbody.dumps(frame)


def hello(name, agent, udp=None):
    """Our hello; *udp* is the port of our UDP socket, where the peer may reach our UDP streams."""
    frame = {"t": "hello", "v": VERSION, "name": name, "agent": agent}
    if udp:
        frame["udp"] = udp
    return frame


def ack_ids(frame) -> list:
    """The message ids a decoded ack frame acknowledges."""
    ids = frame.get("ids")
    return [frame["id"]] if ids is None else ids


def acks(ids):
    """Ack frames for *ids* (a list): the single-``id`` form for one, else ``ids`` batches of MAX_ACK_IDS."""
    if len(ids) == 1:
        return [{"t": "ack", "id": ids[0]}]
    return [{"t": "ack", "ids": ids[i:i + MAX_ACK_IDS]} for i in range(0, len(ids), MAX_ACK_IDS)]


def error(code, message, ref=None):
    frame = {"t": "error", "code": code, "message": message[:1000]}
    if ref:
        frame["ref"] = ref
    return frame
