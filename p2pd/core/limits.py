"""``--limits NAME=VALUE,NAME=VALUE`` for either role: one parser for any frozen dataclass of limits.

The names are the dataclass's fields with ``-`` for ``_``; values are amounts as :func:`p2pd.core.sizes.parse_amount`
reads them (``2G``, ``1.5K``, ``600``), whole numbers where the field is an ``int``. A value must be at least 1
unless the field says otherwise in its metadata (``field(default=0.75, metadata={"min": 0.05, "max": 1})``), so
that a typo cannot switch a defence off. Both roles parse here so that their ``--limits`` speak one language and
every mistake gets the same kind of message, naming the limits that exist."""

import dataclasses

from p2pd.core.sizes import parse_amount


class LimitsError(ValueError):
    """A ``--limits`` text that does not parse; the message says what is wrong and what would be right."""


def limit_names(cls) -> dict:
    """{"option-name": dataclass field} of the limits dataclass *cls*."""
    return {f.name.replace("_", "-"): f for f in dataclasses.fields(cls)}


def parse_value(text):
    try:
        return parse_amount(text)
    except ValueError:
        raise LimitsError("%r is not a number (sizes may end in K, M or G)" % text) from None


def parse_limits(text, cls):
    """``"a=100,b-c=10"`` -> ``cls()`` with those two changed; LimitsError (saying which names exist) for an
    unknown name, a value that is no number, a fraction for a whole number, or a value out of its range."""
    fields = limit_names(cls)
    changes = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, sep, raw = item.partition("=")
        name = name.strip().lower()
        if not sep or name not in fields:
            raise LimitsError("unknown limit %r; the limits are: %s" % (name or item, ", ".join(sorted(fields))))
        field = fields[name]
        value = parse_value(raw)
        if field.type in (int, "int"):
            if value != int(value):
                raise LimitsError("limit %s must be a whole number, not %r" % (name, raw.strip()))
            value = int(value)
        low, high = field.metadata.get("min", 1), field.metadata.get("max")
        if value < low:
            raise LimitsError("limit %s must be at least %g, not %r" % (name, low, raw.strip()))
        if high is not None and value > high:
            raise LimitsError("limit %s must be at most %g, not %r" % (name, high, raw.strip()))
        changes[field.name] = value
    return dataclasses.replace(cls(), **changes)
