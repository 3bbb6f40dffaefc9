"""Exit codes of ``p2pctl`` and the error type that carries one."""

OK = 0
ERROR = 1
USAGE = 2
QUEUED = 3  # the peer is offline: the message is queued and will be delivered when it is back
UNKNOWN_PEER = 4
REFUSED = 5  # the receiver refused the files (rejected, denies files, too large, no space, unsafe name)
NOINPUT = 66  # EX_NOINPUT: a file to send is missing or unreadable
NO_DAEMON = 69  # EX_UNAVAILABLE
TEMPFAIL = 75  # EX_TEMPFAIL: the daemon or the registry is busy or unreachable right now

CODE_LINES = {
    OK: "ok (a message: delivered)",
    ERROR: "other error",
    USAGE: "usage error (bad arguments, or several daemons run: pick one with --name)",
    QUEUED: "peer offline: the message is queued and will be delivered when the peer is back",
    UNKNOWN_PEER: "unknown peer",
    REFUSED: "the receiver refused the files (rejected, cancelled, denied, too large, not enough space, unsafe name)",
    NOINPUT: "a file to send is missing or unreadable",
    NO_DAEMON: "no p2pd daemon is running (p2pctl says how to start one)",
    TEMPFAIL: "the daemon, the registry or the peer is unavailable right now: try again later",
}
COMMON_CODES = (OK, ERROR, USAGE, NO_DAEMON, TEMPFAIL)  # what any command may end with
FINDING = """finding the daemon: --data-dir DIR, else --name NAME ($XDG_DATA_HOME or ~/.local/share, then p2pd/NAME),
else $P2PD_DATA_DIR, else $P2PD_NAME, else the one daemon running under ~/.local/share/p2pd/."""


def epilog(codes=None) -> str:
    """The exit codes (all, or those of one command, *codes*) and how the daemon is found, for ``--help``."""
    shown = sorted(CODE_LINES if codes is None else set(codes) | set(COMMON_CODES))
    return "exit codes:\n%s\n\n%s" % ("\n".join("  %-3d %s" % (c, CODE_LINES[c]) for c in shown), FINDING)


EPILOG = epilog()

# daemon error codes (p2pd.errors and p2pd.peer.control) -> exit code; anything else is ERROR
ERROR_EXITS = {
    "unknown_peer": UNKNOWN_PEER,
    "peer_offline": QUEUED,
    "bad_request": USAGE,
    "invalid_name": USAGE,
    "too_large": USAGE,
    "unavailable": TEMPFAIL,
    "store_unavailable": TEMPFAIL,
    "rate_limited": TEMPFAIL,
    "rejected": REFUSED,
    "cancelled": REFUSED,  # the receiver cancelled: sending again asks it again
    "denied": REFUSED,
    "offer_too_large": REFUSED,
    "no_space": REFUSED,
    "bad_name": REFUSED,
    "interrupted": TEMPFAIL,
    "file_missing": NOINPUT,
    "file_unreadable": NOINPUT,
}

HINTS = {
    "unknown_peer": "p2pctl peers lists who is online",
    "unavailable": "try again later",
    "store_unavailable": "try again later",
    "rate_limited": "try again in a moment",
    "interrupted": "run the same command again to resume",
}


class CliError(Exception):
    """Something to tell the user, with the exit code to leave with. *code* is the daemon's error code, if any."""

    def __init__(self, message, exit_code=ERROR, code=None, hint=None):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.code = code
        self.hint = hint


class DaemonError(CliError):
    """An error reply from the daemon."""

    def __init__(self, code, message, reply=None):
        code = code if isinstance(code, str) else "error"
        message = message if isinstance(message, str) else "the daemon reported an error (%s)" % code
        super().__init__(message, ERROR_EXITS.get(code, ERROR), code, HINTS.get(code))
        self.reply = reply or {}


class NoDaemon(CliError):
    def __init__(self, message, hint=None):
        super().__init__(message, NO_DAEMON, "no_daemon", hint)


class Unavailable(CliError):
    def __init__(self, message, hint=None):
        super().__init__(message, TEMPFAIL, "unavailable", hint)
