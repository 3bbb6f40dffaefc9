"""The errors of file transfers (all :class:`p2pd.errors.P2PDError`: their messages are what users read), and
how a reason given by the peer is cleaned before it is shown."""

from p2pd.errors import P2PDError


class TransferError(P2PDError):
    code = "transfer_failed"
    status = 409

    def __init__(self, message, code=None, **details):
        super().__init__(message, **details)
        if code:
            self.code = code


class FileProblem(TransferError):
    code = "file_error"


class LocalProblem(TransferError):
    """Our side cannot store the files (disk full, an unusable inbox): not the sender's fault, resumable."""

    code = "write_failed"


def peer_text(value, limit=300):
    """A reason the peer gave, as we show it."""
    return value[:limit] if isinstance(value, str) else "(no reason given)"


def peer_code(value):
    """An error code the peer gave, if it looks like one."""
    return value if isinstance(value, str) and value.replace("_", "").isalnum() and len(value) <= 40 else "failed"


def write_error(e, what="write to the inbox"):
    """The TransferError for an OSError of the inbox's disk."""
    return TransferError("cannot %s: %s" % (what, e.strerror), code="disk_full" if e.errno == 28 else "write_failed")
