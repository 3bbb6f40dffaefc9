"""Strict JSON for untrusted bodies and lines: every malformed input becomes :class:`BadRequest`.

Refuses what ``json.loads`` would let through or choke on: bad UTF-8, NaN/Infinity, duplicate keys,
absurd nesting (no RecursionError escapes) and huge integers (bounded digits). Encoding is compact,
ASCII-safe and sorted, so the same object always gives the same bytes.
"""

import json

from p2pd.errors import BadRequest

MAX_DEPTH = 32
MAX_INT_DIGITS = 30


def _no_constants(name):
    raise BadRequest("JSON constant %s is not allowed" % name)


def _no_duplicates(pairs):
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise BadRequest("duplicate key %r in JSON object" % (key,))
        obj[key] = value
    return obj


def _bounded_int(text):
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise BadRequest("integer with more than %d digits" % MAX_INT_DIGITS)
    return int(text)


def _bounded_float(text):
    if len(text) > 64:
        raise BadRequest("number too long")
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise BadRequest("number out of range")
    return value


def _depth_ok(text: str) -> bool:
    depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return False
        elif ch in "]}":
            depth -= 1
    return True


def _check_strings(obj, depth=0):
    """Refuse lone surrogates ("\\ud800"): they decode to str but cannot be encoded or stored."""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest("JSON string with a lone surrogate escape") from None
    elif isinstance(obj, dict):
        for key, value in obj.items():
            _check_strings(key, depth)
            _check_strings(value, depth + 1)
    elif isinstance(obj, list):
        for value in obj:
            _check_strings(value, depth + 1)


def loads(data):
    """Parse *data* (bytes or str) strictly; raise :class:`BadRequest` with a clear message."""
    if isinstance(data, (bytes, bytearray)):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("body is not valid UTF-8") from None
    if not _depth_ok(data):
        raise BadRequest("JSON nested deeper than %d levels" % MAX_DEPTH)
    try:
        obj = json.loads(
            data,
            parse_constant=_no_constants,
            object_pairs_hook=_no_duplicates,
            parse_int=_bounded_int,
            parse_float=_bounded_float,
        )
    except BadRequest:
        raise
    except (ValueError, RecursionError) as e:
        raise BadRequest("malformed JSON: %s" % (e,)) from None
    if "\\u" in data:
        _check_strings(obj)
    return obj


def loads_object(data) -> dict:
    """Like :func:`loads` but the top level must be an object."""
    obj = loads(data)
    if not isinstance(obj, dict):
        raise BadRequest("expected a JSON object")
    return obj


def dumps(obj) -> bytes:
    """Compact, sorted, ASCII-only JSON bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
