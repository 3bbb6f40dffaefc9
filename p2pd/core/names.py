"""Peer and room names: NFKC + casefold, then a small alphabet, so look-alikes cannot impersonate.

A name is compared (and stored) in its canonical form. Anything that does not reduce to
``[a-z0-9_-]{3,32}`` is refused: Cyrillic look-alikes, zero-width characters, spaces, control characters.
Room names follow the same rule; their display form keeps the creator's case (``G1``) while the canonical
form (``g1``) decides uniqueness.
"""

import re
import unicodedata

from p2pd.errors import InvalidName

NAME_RE = re.compile(r"[a-z0-9_-]{3,32}")
ROOM_DISPLAY_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
ROOM_RE = re.compile(r"[a-z0-9_-]{1,32}")
GENERAL = "General"


def _fold(text) -> str:
    if not isinstance(text, str):
        raise InvalidName("a name must be a string")
    return unicodedata.normalize("NFKC", text).casefold()


def canonical_name(text) -> str:
    """The canonical peer name for *text*, or :class:`InvalidName` saying what is allowed."""
    folded = _fold(text)
    if not NAME_RE.fullmatch(folded):
        raise InvalidName(
            "invalid name %r: use 3 to 32 characters from a-z, 0-9, '_' and '-'" % (text,)
        )
    return folded


def room_display(text) -> str:
    """Validate a room name as typed (letters keep their case) and return it."""
    if not isinstance(text, str) or not ROOM_DISPLAY_RE.fullmatch(text):
        raise InvalidName(
            "invalid room name %r: use 1 to 32 characters from A-Z, a-z, 0-9, '_' and '-'" % (text,)
        )
    return text


def canonical_room(text) -> str:
    """The canonical (case-insensitive) key of a room name."""
    return _fold(room_display(text))
