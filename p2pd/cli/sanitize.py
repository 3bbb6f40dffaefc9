"""Make text from the network safe to print on a terminal, and measure it for tables.

Names, messages and filenames come from other people. Printed raw, ``ESC[1A\\r`` moves the cursor and
overwrites earlier lines, BEL rings, ``\\n``/U+0085/U+2028 fake a new line, and bidi overrides or isolates
(U+202A-U+202E, U+2066-U+2069) reverse the rest of the line. :func:`clean` turns each such character into a
visible escape (``\\x1b``, ``\\n``, ``\\u202e``); everything else, Persian, Arabic, emoji and their joiners
included, is printed unchanged. :func:`json_line` does the same for ``--json`` output while keeping it valid JSON
that decodes to exactly the original data.
"""

import json
import re
import unicodedata

# C0, DEL, C1 (incl. U+0085), line/paragraph separators, bidi embeddings/overrides/isolates, lone surrogates
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
# in JSON text the C0 characters are escaped by json.dumps already
UNSAFE_IN_JSON = re.compile("[\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")

NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape(char: str) -> str:
    if char in NAMED:
        return NAMED[char]
    code = ord(char)
    return "\\x%02x" % code if code < 0x100 else "\\u%04x" % code


def clean(value) -> str:
    """*value* as one line of harmless text (None becomes "")."""
    if value is None:
        return ""
    if not isinstance(value, str):
        value = str(value)
    return UNSAFE.sub(lambda m: escape(m.group()), value)


def json_line(obj) -> str:
    """*obj* as one line of JSON: non-ASCII text readable, but no raw control, separator or bidi character."""
    text = json.dumps(obj, ensure_ascii=False, separators=(", ", ": "))
    return UNSAFE_IN_JSON.sub(lambda m: "\\u%04x" % ord(m.group()), text)


def width(text: str) -> int:
    """Terminal columns taken by *text* (wide East Asian and emoji characters count 2, combining marks 0)."""
    total = 0
    for char in text:
        if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me", "Cf"):
            continue
        total += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
    return total


def table(headers, rows) -> list:
    """Lines of an aligned table; cells must be clean already."""
    rows = [list(map(str, row)) for row in rows]
    widths = [max(width(r[i]) for r in [list(headers)] + rows) for i in range(len(headers))]
    lines = []
    for row in [list(headers)] + rows:
        cells = [cell + " " * (widths[i] - width(cell)) for i, cell in enumerate(row[:-1])]
        lines.append("  ".join(cells + [row[-1]]).rstrip())
    return lines
