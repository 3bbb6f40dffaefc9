"""Byte counts for people: ``human_size(1536)`` is ``'1.5 KiB'``."""


def human_size(n) -> str:
    """*n* bytes in the largest binary unit that keeps the number under 1024 (whole bytes below 1 KiB)."""
    n = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1024.0
