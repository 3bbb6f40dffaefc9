"""Checks of the values the store is given, before they reach SQL: each returns the value or raises
:class:`InvalidMessage` with a reason a user can read."""

from p2pd.core.names import canonical_room
from p2pd.errors import InvalidName
from p2pd.peer.storage.errors import InvalidMessage


def text(field: str, value, optional: bool = False):
    """*value* if it is a string SQLite can store as UTF-8 (None too, if *optional*)."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise InvalidMessage("%s must be a string, not %s" % (field, type(value).__name__))
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidMessage(
            "%s contains a lone surrogate (U+%04X at index %d): only valid Unicode text can be stored"
            % (field, ord(value[e.start]), e.start)
        ) from None
    return value


def integer(field: str, value, minimum=None) -> int:
    """*value* if it is an int (not a bool) of at least *minimum*."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidMessage("%s must be an integer, not %s" % (field, type(value).__name__))
    if minimum is not None and value < minimum:
        raise InvalidMessage("%s must be at least %d, not %d" % (field, minimum, value))
    return value


def room_conversation(room: str) -> str:
    """The conversation of *room*: ``"#" + canonical room``."""
    try:
        return "#" + canonical_room(room)
    except InvalidName as e:
        raise InvalidMessage(e.message) from None


def limit(value) -> int:
    """A row limit: a non-negative integer (SQLite would read a negative one as 'no limit')."""
    return integer("limit", value, minimum=0)
