"""The control socket: how ``p2pctl`` (or any local script) talks to the peer daemon.

A unix socket ``control.sock`` in the data dir (mode 0600, in a 0700 directory), one JSON object per line in
both directions. A request ``{"id": 7, "cmd": "msg", "to": "bob", "text": "hi"}`` gets exactly one reply with
the same id, ``{"id": 7, "ok": true, "result": ...}`` or ``{"id": 7, "ok": false, "error": CODE, "message":
TEXT}``. Requests are handled concurrently, so replies to pipelined requests may come out of order. After
``watch`` the connection also carries ``{"event": ...}`` lines (see :mod:`p2pd.peer.facade`) until it closes.

=========  ==================================  ==========================================================
command    arguments                           result
=========  ==================================  ==========================================================
ping       -                                   ``{"pong": true, "name": NAME}``
status     -                                   ``facade.status()``
peers      -                                   list of online peer records
whois      ``name``                            the peer's record plus ``reachability``
msg        ``to``, ``text``, ``wait`` (s, opt)  ``{"id", "to", "status": "delivered"|"queued", "via"}``
history    ``conversation`` (opt), ``limit``   stored messages, oldest first
watch      -                                   ``{"watching": true}``, then events on this connection
unwatch    -                                   ``{"watching": false}``
send       ``to``, ``paths`` (absolute)        the transfer's outcome (see below), once it is over
get        ``peer``, ``name``                  the same, for a file or folder pulled from the peer's share
ls         ``peer``, ``path`` (opt)            ``{"peer", "path", "items": [{"name", "type", "size"}]}``
accept     ``tid``                             ``{"tid", "status"}``: an offer waiting for consent
reject     ``tid``                             ``{"tid", "status": "rejected"}``
cancel     ``tid``                             ``{"tid", "status": "cancelled"}``
transfers  ``limit`` (opt)                     transfers, newest first, running and finished
preview    ``tid``, ``index`` (opt)            a kept preview: ``{"tid", "index", "name", "image", "jpeg", "bytes"}``
create     ``room``                            the new room (its creator is its first member)
join       ``room``                            the room with its members
leave      ``room``                            the room with its members (General cannot be left)
groups     -                                   every room: ``name``, ``member_count``, ...
public     ``room``, ``text``                  ``{"id", "room", "recipients", "status": "sent"}`` once stored
private    ``to``, ``text``                    as ``msg``
users      -                                   everyone online: ``peers`` and ourselves (``"self": true``)
members    ``room``                            the other members of a room a post reaches (General: those online)
delete     ``room``                            delete a room we own: ``{"id", "deleted": true}``
block      ``name``                            ``{"name", "blocked": true}``: its links, messages, offers refused
unblock    ``name``                            ``{"name", "blocked": false, "was_blocked"}``
blocked    -                                   the blocked names
quarantine ``limit`` (opt)                     mailbox items set aside: ``[{"id", "from", "reason", "received_at"}]``
=========  ==================================  ==========================================================

``send`` and ``get`` write ``{"id": ID, "progress": {...}}`` lines (bytes, done, rate, eta) while they run,
then their one reply: ``{"tid", "status": "done", "bytes", "sent", "resumed_from", "seconds", "rate",
"saved": [inbox-relative paths on the receiver]}``. A failure is an error reply whose ``error`` says why
(``rejected``, ``denied``, ``no_space``, ``offer_too_large``, ``bad_name``, ``hash_mismatch``, ``size_mismatch``,
``interrupted``, ``file_missing``, ``file_unreadable``, ...) and which carries the same fields. Closing the
connection while a ``send`` or ``get`` runs cancels it (the receiver keeps what it verified, for a resume).

Error codes besides the :mod:`p2pd.errors` ones: ``bad_request`` (malformed JSON, missing or mistyped argument),
``unknown_command``, ``too_large`` (a line over 1 MiB; the connection is then closed), ``forbidden`` (a client
running as another user; closed), ``unavailable`` (the registry or network did not answer) and ``internal``
(a bug, logged with its traceback; the connection stays usable).

Everything is encoded with ``ensure_ascii``: the wire is pure ASCII, so no byte on it can end a line early or
be an invalid UTF-8 sequence, and any Unicode in names and messages travels exactly.
"""

import json
import os
import socket
import stat
import struct
from collections import deque
from collections.abc import Coroutine

from twisted.internet import defer, error as net_error, protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.protocols.basic import LineReceiver
from twisted.web.client import ResponseFailed, ResponseNeverReceived

from p2pd.core.sizes import human_size
from p2pd.errors import BadRequest, P2PDError
from p2pd.peer.control_commands import Commands, UnknownCommand, encode
from p2pd.peer.facade import DaemonFacade

log = Logger()

SOCKET_NAME = "control.sock"
MAX_LINE = 1 << 20
MAX_PENDING_EVENTS = 10000  # events held for a watcher that does not read; beyond this it is disconnected
MAX_PENDING_BYTES = 4 << 20  # bytes of them, likewise
CLOSE_GRACE = 5.0  # seconds a refused client has to read its error line before it is cut off

NETWORK_ERRORS = (net_error.ConnectError, net_error.ConnectionLost, net_error.TimeoutError, defer.TimeoutError,
                  defer.CancelledError, ResponseFailed, ResponseNeverReceived)


def control_path(data_dir: str) -> str:
    return os.path.join(data_dir, SOCKET_NAME)


def _quote(argument: str) -> str:
    return argument.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def control_endpoint(data_dir: str) -> str:
    """The server endpoint string of the control socket of *data_dir*: mode 0600 (octal), and with a lock file
    so that a socket left behind by a killed daemon is removed and replaced when the next one starts."""
    return "unix:%s:mode=600:lockfile=1" % _quote(control_path(data_dir))


def release_stale_socket(data_dir: str) -> bool:
    """Remove a control socket and lock link left behind in *data_dir*; True if there was one.

    Twisted's lock link names the pid of the daemon that listened. After a crash that pid may belong to an
    unrelated live process (pid reuse, typically after a reboot) or to a zombie not yet reaped, and listening
    then fails with "Cannot acquire lock". A daemon that holds the data dir's own exclusive lock (``peer.lock``)
    knows no other daemon can own the socket, and may call this before listening."""
    path = control_path(data_dir)
    found = False
    for leftover, is_ours in ((path + ".lock", os.path.islink), (path, lambda p: stat.S_ISSOCK(os.lstat(p).st_mode))):
        try:
            if is_ours(leftover):
                os.unlink(leftover)
                found = True
        except FileNotFoundError:
            pass
    if found:
        log.info("removed a stale control socket in {data_dir}", data_dir=data_dir)
    return found


class Unavailable(P2PDError):
    code = "unavailable"
    status = 503


def peer_uid(transport):
    """The uid of the process at the other end of a unix socket transport (SO_PEERCRED), or None if unknown."""
    try:
        handle = transport.getHandle()
        creds = handle.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (AttributeError, OSError):
        return None
    _pid, uid, _gid = struct.unpack("iII", creds)  # struct ucred: pid_t, uid_t, gid_t
    return uid


class ControlProtocol(Commands, LineReceiver):
    """One control connection: decode a request line, call the facade, write the reply; relay events after
    ``watch``. Backpressure: the protocol is the transport's producer, so when a client stops reading we stop
    reading its requests and hold its events (up to :data:`MAX_PENDING_EVENTS`)."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE

    def __init__(self, facade: DaemonFacade, uid=None, clock=None):
        self.facade = facade
        self.uid = uid
        self.clock = clock
        self.watching = False
        self.closed = False
        self.refused = False
        self.grace = None
        self.held = deque()
        self.held_bytes = 0
        self.running = {}  # request id -> transfer Deferred to cancel if the client goes away

    # connection

    def connectionMade(self):
        if self.uid is not None:
            other = peer_uid(self.transport)
            if other is not None and other != self.uid:
                log.warn("control connection from uid {other} refused (the daemon runs as uid {uid})",
                         other=other, uid=self.uid)
                return self.refuse("forbidden", "this daemon belongs to another user")
        self.transport.registerProducer(self, True)

    def connectionLost(self, reason=protocol.connectionDone):
        self.closed = True
        self.stop_watching()
        running, self.running = self.running, {}
        for d in running.values():
            d.cancel()
        self.held.clear()
        self.held_bytes = 0
        if self.grace is not None and self.grace.active():
            self.grace.cancel()

    def refuse(self, code, message):
        """Send one error line and end the connection so that the client can read it: close our side for
        writing (it gets the line, then EOF), discard what it still sends, and cut it off after
        :data:`CLOSE_GRACE` seconds. (Closing with its data unread would reset the connection, and the client
        would see ECONNRESET instead of the reason.)"""
        self.refused = True
        self.held.clear()
        self.held_bytes = 0
        self.send_error(None, code, message)
        half_close = getattr(self.transport, "loseWriteConnection", None)
        if half_close is None or self.clock is None:
            return self.transport.loseConnection()
        half_close()
        self.grace = self.clock.callLater(CLOSE_GRACE, self.transport.abortConnection)

    def dataReceived(self, data):
        if not self.refused:
            LineReceiver.dataReceived(self, data)

    def lineLengthExceeded(self, line):
        self.refuse("too_large", "request line longer than %d bytes; closing" % self.MAX_LENGTH)

    def resumeProducing(self):
        while self.held and not self.closed:
            data = self.held.popleft()
            self.held_bytes -= len(data)
            self.write(data)
        LineReceiver.resumeProducing(self)

    # requests

    def lineReceived(self, line):
        if self.refused or self.closed:
            return
        line = line.rstrip(b"\r")
        if not line.strip():
            return
        try:
            request = self.decode(line)
        except BadRequest as e:
            return self.send_error(getattr(e, "request_id", None), e.code, e.message)
        request_id = request.get("id")
        try:
            result = self.dispatch(request)
        except BaseException:
            return self._reply(Failure(), request_id)
        if isinstance(result, defer.Deferred):
            result.addBoth(self._reply, request_id)
        elif isinstance(result, Coroutine):
            defer.ensureDeferred(result).addBoth(self._reply, request_id)
        else:
            self._reply(result, request_id)

    def _reply(self, result, request_id):
        """Write the reply to one request: its result, or the error it failed with."""
        try:
            if isinstance(result, Failure):
                self.send_failure(result, request_id)
            else:
                self.send_result(result, request_id)
        except Exception:
            log.failure("control reply to {id} failed", id=request_id)

    def decode(self, line):
        try:
            request = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            raise BadRequest("request is not UTF-8") from None
        except ValueError as e:
            raise BadRequest("request is not valid JSON: %s" % e) from None
        if not isinstance(request, dict):
            raise BadRequest('a request is a JSON object like {"id": 1, "cmd": "status"}')
        request_id = request.get("id")
        if not (request_id is None or isinstance(request_id, str)
                or (isinstance(request_id, int) and not isinstance(request_id, bool))):
            raise BadRequest('"id" must be an integer or a string')
        if not isinstance(request.get("cmd"), str):
            e = BadRequest('a request needs "cmd", a string such as "status"')
            e.request_id = request_id
            raise e
        return request

    def dispatch(self, request):
        handler = getattr(self, "do_" + request["cmd"], None)
        if handler is None:
            raise UnknownCommand("unknown command %r; commands: %s" % (request["cmd"], ", ".join(self.commands())))
        return handler(request)

    @classmethod
    def commands(cls):
        return sorted(name[3:] for name in dir(cls) if name.startswith("do_"))

    # writing

    def stop_watching(self):
        if self.watching:
            self.watching = False
            self.facade.unsubscribe(self.event)

    def event(self, event):
        if self.closed:
            return
        try:
            data = encode(event)
        except (TypeError, ValueError):
            log.failure("event {kind} cannot be encoded as JSON", kind=event.get("event"))
            return
        if self.refused:
            return
        if self.paused:
            self.held.append(data)
            self.held_bytes += len(data)
            if len(self.held) > MAX_PENDING_EVENTS or self.held_bytes > MAX_PENDING_BYTES:
                log.warn("a control client did not read its events ({n} waiting, {size}); disconnecting it",
                         n=len(self.held), size=human_size(self.held_bytes))
                self.stop_watching()
                self.refuse("too_slow", "this connection did not read its events (%d waiting, %s); closing it: "
                                        "watch again to go on" % (len(self.held), human_size(self.held_bytes)))
            return
        self.write(data)

    def write(self, data):
        if not self.closed:
            self.transport.write(data + self.delimiter)

    def send_result(self, result, request_id):
        try:
            data = encode({"id": request_id, "ok": True, "result": result})
        except (TypeError, ValueError):
            log.failure("reply to control request {id} cannot be encoded as JSON", id=request_id)
            return self.send_error(request_id, "internal", "internal error: the reply could not be encoded")
        self.write(data)

    def send_failure(self, failure, request_id):
        e = failure.value
        if isinstance(e, P2PDError):
            return self.send_error(request_id, e.code, e.message, getattr(e, "details", None))
        if isinstance(e, NETWORK_ERRORS):
            log.info("control request {id} failed: {error}", id=request_id, error=e)
            return self.send_error(request_id, Unavailable.code,
                                   "the registry or the network did not answer (%s); try again later"
                                   % (e.__class__.__name__,))
        log.failure("control request {id} failed", failure, id=request_id)
        self.send_error(request_id, "internal", "internal error (%s); the daemon log has the details"
                        % e.__class__.__name__)

    def send_error(self, request_id, code, message, details=None):
        reply = {"id": request_id, "ok": False, "error": code, "message": message}
        if details:
            try:
                encode(details)
            except (TypeError, ValueError):
                details = None
            else:
                reply.update({k: v for k, v in details.items() if k not in reply})
        self.write(encode(reply))


class ControlFactory(protocol.Factory):
    """Builds a :class:`ControlProtocol` per connection over *facade*; refuses processes of another uid.

    While the port starts listening the process umask is narrowed to 0177, so the socket file is created 0600
    instead of being created with the usual umask and chmod-ed a moment later; the umask is restored on the
    next reactor turn."""

    protocol = ControlProtocol

    def __init__(self, facade: DaemonFacade, uid=None, reactor=None):
        self.facade = facade
        self.uid = os.getuid() if uid is None else uid
        self.reactor = reactor
        self.saved_umask = None

    @property
    def clock(self):
        if self.reactor is None:
            from twisted.internet import reactor

            self.reactor = reactor
        return self.reactor

    def startFactory(self):
        if self.saved_umask is None:
            self.saved_umask = os.umask(0o177)
            self.clock.callLater(0, self.restore_umask)

    def restore_umask(self):
        if self.saved_umask is not None:
            os.umask(self.saved_umask)
            self.saved_umask = None

    def stopFactory(self):
        self.restore_umask()

    def buildProtocol(self, addr):
        p = self.protocol(self.facade, self.uid, self.clock)
        p.factory = self
        return p
