"""One exception hierarchy for p2pd. Each class carries the machine code and HTTP status that the edges
(HTTP API, control socket, CLI) report; the message is what a user reads."""


class P2PDError(Exception):
    """Base of every error p2pd reports to a user or a peer."""

    code = "error"
    status = 400

    def __init__(self, message: str, **details):
        super().__init__(message)
        self.message = message
        self.details = details

    def to_json(self) -> dict:
        body = {"error": self.code, "message": self.message}
        body.update(self.details)
        return body


class BadRequest(P2PDError):
    code = "bad_request"
    status = 400


class InvalidName(BadRequest):
    code = "invalid_name"


class Unauthorized(P2PDError):
    code = "unauthorized"
    status = 401


class Forbidden(P2PDError):
    code = "forbidden"
    status = 403


class Blocked(Forbidden):
    """The peer is on our block list (``p2pctl block``)."""

    code = "blocked"


class NotFound(P2PDError):
    code = "not_found"
    status = 404


class MethodNotAllowed(P2PDError):
    code = "method_not_allowed"
    status = 405


class Conflict(P2PDError):
    code = "conflict"
    status = 409


class NameTaken(Conflict):
    code = "name_taken"


class TooLarge(P2PDError):
    code = "too_large"
    status = 413


class UnsupportedMediaType(P2PDError):
    code = "unsupported_media_type"
    status = 415


class RetryLater(P2PDError):
    """A refusal that passes: the edges send ``retry_after`` (whole seconds) as Retry-After and in the body."""

    def __init__(self, message: str, retry_after: int, **details):
        super().__init__(message, retry_after=retry_after, **details)
        self.retry_after = retry_after


class TooManyRequests(RetryLater):
    code = "rate_limited"
    status = 429


class TooManyClaims(TooManyRequests):
    """The registry took as many new names from this client address as it takes in an hour."""

    code = "too_many_claims"


class RegistryFull(RetryLater):
    """The registry's store is near its memory limit: what would grow it (deposits first) waits."""

    code = "registry_full"
    status = 507


class DataDirInUse(P2PDError):
    """Another process holds the data dir's lock (:mod:`p2pd.datadir`)."""

    code = "data_dir_in_use"


# -- names, rooms and the mailbox (the registry raises these; the peer reports them in the user's words) --------

class NoSuchPeer(NotFound):
    code = "unknown_peer"


class NoSuchRoom(NotFound):
    code = "unknown_room"


class RoomExists(Conflict):
    code = "room_exists"


class AlreadyMember(Conflict):
    code = "already_member"


class NotMember(Conflict):
    code = "not_member"


class MailboxFull(Conflict):
    code = "mailbox_full"


class TooManyNames(Forbidden):
    """One key may own only so many names (the registry's ``names-per-key``)."""

    code = "too_many_names"


class TooManyRooms(Forbidden):
    """One name may own only so many rooms (the registry's ``rooms-per-owner``)."""

    code = "too_many_rooms"


# -- peers and links ---------------------------------------------------------------------------------------------

class PeerOffline(Conflict):
    code = "peer_offline"


class LinkFailed(P2PDError):
    """A link to a peer could not be set up or was refused; ``code`` is the reason the other side gave."""

    code = "link_failed"
    status = 502

    def __init__(self, message, code=None):
        super().__init__(message)
        if code:
            self.code = code


class IdentityMismatch(P2PDError):
    """A peer's key is not the one its name is bound to (registry record, TLS certificate or our pin)."""

    code = "identity_mismatch"
    status = 403


class StoreUnavailable(P2PDError):
    """The backing store (Redis) does not answer; callers retry later."""

    code = "store_unavailable"
    status = 503
