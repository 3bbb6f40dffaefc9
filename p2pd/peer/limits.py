"""The limits that hold hostile peers off (issue 12), in one place, each with its default.

Set them with ``--limits NAME=VALUE,NAME=VALUE`` (or ``limits = ...`` in the ``[peer]`` section of a config
file); the README's "Hostile peers and the limits that hold them" says what each one means and what a user sees
when it is hit. Sizes take K, M, G suffixes (powers of 1024)."""

import dataclasses

from p2pd.core.limits import LimitsError, limit_names
from p2pd.core.limits import parse_limits as parse_any

__all__ = ["FIELDS", "Limits", "LimitsError", "parse_limits"]


@dataclasses.dataclass(frozen=True)
class Limits:
    unverified: int = 256  # connections not yet verified (TLS + hello + registry check), in all
    unverified_per_address: int = 64  # of those, from one source address
    connections_per_second: float = 20.0  # new connections per second from one source address (bursts of 64)
    dials_per_second: float = 20.0  # connections we open to peers per second, in all (bursts of twice that)
    frames_per_second: float = 20000.0  # frames a link may bring per second, sustained (bursts of 4x that)
    bytes_per_second: float = 8 << 20  # bytes a link may bring per second, sustained (bursts of 4x that)
    stored_per_peer: int = 256 << 20  # bytes of messages kept from one peer (history and room posts)
    pending_offers: int = 256  # offers waiting for our answer (accept/reject), in all
    pending_offers_per_peer: int = 16  # of those, from one peer
    pending_files: int = 20000  # files in all the offers waiting for an answer
    offer_expiry: float = 300.0  # seconds an offer waits for an answer before it is withdrawn
    unfinished_per_peer: int = 64 << 30  # bytes one peer's unfinished incoming files may hold or still need
    partial_expiry: float = 7 * 86400.0  # seconds an interrupted incoming transfer keeps its partial files


FIELDS = limit_names(Limits)


def parse_limits(text):
    """``"unverified=100,unverified-per-address=10"`` -> Limits with those two changed; LimitsError (saying
    which names exist) for anything else (:mod:`p2pd.core.limits` parses both roles' limits)."""
    return parse_any(text, Limits)
