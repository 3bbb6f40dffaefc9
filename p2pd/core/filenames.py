"""Names of received files: what a sender may offer, and what the receiver writes to disk.

A sender offers a relative POSIX path (``dir/sub/file.txt``); the receiver must stay safe against a
hostile one (cf. croc CVE-2023-43619 / CVE-2023-43616), so :func:`check_relpath` refuses rather than
repairs:

* absolute paths, Windows drives (``C:x``, any character then ``:``) and UNC forms, any backslash,
  more than 32 components or 4096 UTF-8 bytes, empty components, ``.`` and ``..``;
* control characters (C0, DEL, C1, U+2028/U+2029), bidi controls, text that is not valid UTF-8
  (surrogates), and slash or dot look-alikes (U+2215, U+FF0F, U+2024, ...);
* a component whose NFKC form contains ``/`` or ``\\`` or starts with ``.``;
* hidden names (any component starting with ``.``, so ``.ssh/authorized_keys`` never lands), names ending
  with a space or ``.`` (Windows strips them), whitespace-only names, components over 255 UTF-8 bytes.

Everything else is kept as sent: ``doc..pdf``, ``résumé.pdf``, ``گزارش.pdf``, emoji. The receiver then
passes each component through :func:`safe_component` (Windows device names, a leading ``-``) and, if the name exists,
tries :func:`numbered` alternatives. A sender uses :func:`sender_name` so that what it offers is accepted,
and :func:`is_hidden_or_unsafe` to skip (and count) entries when walking a directory.
"""

import re
import unicodedata

from p2pd.errors import BadRequest

PATH_MAX = 4096
NAME_MAX = 255
DEPTH_MAX = 32
EXT_MAX = 32  # a longer "extension" is just part of the name

BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
LOOKALIKES = frozenset("\u2215\u2044\uff0f\u29f8\uff3c\ufe68\u2024\uff0e")
LINE_BREAKS = frozenset("\u0085\u2028\u2029")
DRIVE_RE = re.compile(r".:", re.DOTALL)  # Windows (and ntpath) take any "?:" prefix for a drive
RESERVED = frozenset(["con", "prn", "aux", "nul"]
                     + ["%s%s" % (dev, n) for dev in ("com", "lpt") for n in "123456789\u00b9\u00b2\u00b3"])
COMPOUND_EXTS = (".tar.gz", ".tar.bz2", ".tar.xz", ".tar.zst")


class BadFileName(BadRequest):
    code = "bad_name"


def _shown(name: str) -> str:
    """*name* quoted with every control, bidi or surrogate character escaped, and shortened."""
    return repr(name) if len(name) <= 80 else repr(name[:77]) + "..."


def _refused(path: str, why: str) -> BadFileName:
    return BadFileName("refused file name %s: %s" % (_shown(path), why))


def _bad_char(ch: str) -> bool:
    """A character no component may contain (``/`` included, since a component is between slashes)."""
    o = ord(ch)
    return (o < 0x20 or 0x7F <= o <= 0x9F or 0xD800 <= o <= 0xDFFF
            or ch in "/\\" or ch in BIDI or ch in LOOKALIKES or ch in LINE_BREAKS
            or any(c in "/\\" for c in unicodedata.normalize("NFKC", ch)))


def _problem(comp: str):
    """Why *comp* is refused as one path component, or None if it is accepted."""
    if comp == "":
        return "empty component"
    if comp in (".", ".."):
        return "%r is not allowed" % comp
    bad = next((ch for ch in comp if _bad_char(ch)), None)
    if bad is not None:
        return "character %s (U+%04X) is not allowed" % (ascii(bad), ord(bad))
    if len(comp.encode("utf-8")) > NAME_MAX:
        return "a component is longer than %d bytes" % NAME_MAX
    if comp.startswith(".") or unicodedata.normalize("NFKC", comp).startswith("."):
        return "hidden names (starting with '.') are not allowed"
    if comp[-1] in " .":
        return "a name must not end with a space or '.'"
    if comp.strip() == "":
        return "a name must not be only whitespace"
    if DRIVE_RE.match(comp):
        return "drive letters are not allowed"
    return None


def check_relpath(path) -> tuple:
    """The components of *path*, a relative '/'-separated path offered by a sender, or BadFileName."""
    if not isinstance(path, str):
        raise BadFileName("refused file name: a file name must be a string, not %s" % type(path).__name__)
    if path == "":
        raise _refused(path, "the name is empty")
    try:
        size = len(path.encode("utf-8"))
    except UnicodeEncodeError:
        raise _refused(path, "the name is not valid Unicode (surrogates)") from None
    if size > PATH_MAX:
        raise _refused(path, "the path is longer than %d bytes" % PATH_MAX)
    if path.startswith("/"):
        raise _refused(path, "absolute paths are not allowed")
    if "\\" in path:
        raise _refused(path, "backslashes are not allowed")
    parts = tuple(path.split("/"))
    if len(parts) > DEPTH_MAX:
        raise _refused(path, "more than %d components" % DEPTH_MAX)
    for comp in parts:
        why = _problem(comp)
        if why:
            raise _refused(path, why)
    return parts


def is_hidden_or_unsafe(basename: str) -> bool:
    """True if *basename*, as one component, is refused by :func:`check_relpath` (a sender skips it)."""
    return not isinstance(basename, str) or _problem(basename) is not None


def safe_component(name: str) -> str:
    """*name* with a '_' prefix if Windows would take it for a device (``CON``, ``com1.txt``, ...), or if it
    starts with ``-``: a file called ``-rf`` in the inbox is an option to whoever later runs ``rm *`` or
    ``tar cf x *`` there (CWE-88)."""
    if name.startswith("-") or name.split(".")[0].rstrip(" ").lower() in RESERVED:
        stem, ext = _split_ext("_" + name)
        return _fit(stem, ext)
    return name


def _split_ext(name: str):
    """(stem, extension) of *name*; ``.tar.gz`` and friends count as one extension."""
    lower = name.lower()
    for ext in COMPOUND_EXTS:
        if lower.endswith(ext) and len(name) > len(ext):
            return name[:-len(ext)], name[-len(ext):]
    stem, dot, ext = name.rpartition(".")
    if stem and dot and len((dot + ext).encode("utf-8")) <= EXT_MAX:
        return stem, dot + ext
    return name, ""


def _cut(text: str, nbytes: int) -> str:
    """The longest prefix of *text* that fits *nbytes* UTF-8 bytes (never half a character)."""
    return text.encode("utf-8")[:max(nbytes, 0)].decode("utf-8", "ignore")


def _fit(stem: str, ext: str, tail: str = "") -> str:
    """``stem + tail + ext`` within NAME_MAX bytes, shortening the stem only."""
    return _cut(stem, NAME_MAX - len((tail + ext).encode("utf-8"))) + tail + ext


def sender_name(basename: str) -> str:
    """What a sender offers for a local base name, so that :func:`check_relpath` accepts it."""
    name = "".join("_" if _bad_char(ch) else ch for ch in basename).lstrip(".")
    while name and unicodedata.normalize("NFKC", name).startswith("."):
        name = name[1:]  # dot look-alikes such as U+2025 TWO DOT LEADER
    name = name.rstrip(" .")
    if DRIVE_RE.match(name):
        name = name[0] + "_" + name[2:]
    stem, ext = _split_ext(name)
    name = _fit(stem, ext).rstrip(" .")
    return "file" if _problem(name) else name


def numbered(name: str, n: int) -> str:
    """The *n*-th alternative to an existing *name*: ``report (1).pdf``, ``archive (2).tar.gz``.

    If *name* is a path, its last component is numbered.
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    head, slash, base = name.rpartition("/")
    stem, ext = _split_ext(base)
    tail = " (%d)" % n
    if len((tail + ext).encode("utf-8")) >= NAME_MAX:
        raise ValueError("n is too large")
    return head + slash + _fit(stem, ext, tail)
