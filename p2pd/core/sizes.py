"""Byte counts for people: ``human_size(1536)`` is ``'1.5 KiB'``, ``parse_amount("2G")`` is ``2147483648.0``."""

import re

SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_AMOUNT = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", re.IGNORECASE)


def parse_amount(text) -> float:
    """``"2G"`` -> 2147483648.0: a number with an optional K, M, G or T (powers of 1024) and an optional "B" or
    "iB"; ValueError for anything else."""
    match = _AMOUNT.fullmatch(str(text))
    if not match:
        raise ValueError("not an amount: %r" % (text,))
    return float(match.group(1)) * SIZE_UNITS[match.group(2).upper()]


def human_size(n) -> str:
    """*n* bytes in the largest binary unit that keeps the number under 1024 (whole bytes below 1 KiB)."""
    n = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1024.0
