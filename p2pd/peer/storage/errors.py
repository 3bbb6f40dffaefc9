"""The store's errors, in p2pd's one hierarchy (:mod:`p2pd.errors`): only the store raises them."""

from p2pd.errors import BadRequest, P2PDError


class StorageError(P2PDError):
    """The database failed (disk full, I/O error, locked by another process, newer schema)."""

    code = "storage_failed"
    status = 500


class InvalidMessage(BadRequest, ValueError):
    """A value that cannot be stored as given: a missing or mistyped field, or text with a lone surrogate."""

    code = "invalid_message"
