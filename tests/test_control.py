"""The control socket (p2pd.peer.control): requests, replies, errors and events on a StringTransport with a fake
facade; then a few end-to-end checks on a real unix socket (mode, stale socket, several clients, other uid)."""

import json
import os
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import textwrap

import pytest
import pytest_twisted
from twisted.internet import defer, endpoints, error as net_error, task, threads
from twisted.internet.testing import StringTransport
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver

from p2pd.errors import NotFound, P2PDError
from p2pd.peer import control
from p2pd.peer.control import ControlFactory, control_endpoint

HOSTILE = "\x1b[1A\r\n\x85\u2028\u202e\x07"
PERSIAN = "سلام دنیا 👋🏽 ‌می‌خواهم"


class UnknownPeer(NotFound):
    code = "unknown_peer"


class FakeFacade:
    """The DaemonFacade contract with canned answers; send_message answers when the test says so."""

    name = "alice"

    def __init__(self):
        self.subscribers = []
        self.sent = []
        self.outcomes = {}

    def status(self):
        return {"name": "alice", "addresses": {"tcp": ["127.0.0.1:4000"]}, "registry": {"state": "online"},
                "outbox": 2}

    def peers(self):
        return defer.succeed([{"name": "bob", "tcp": ["10.0.0.2:4000"]}])

    def whois(self, name):
        if name == "bob":
            return defer.succeed({"name": "bob", "reachability": {"link": "none", "direct": False}})
        if name == "broken":
            raise ZeroDivisionError("a bug")
        if name == "slow-registry":
            return defer.fail(net_error.ConnectionRefusedError())
        return defer.fail(UnknownPeer("unknown peer %s: nobody registered that name" % name))

    def send_message(self, to, text, wait=10.0):
        d = defer.Deferred()
        self.sent.append((to, text, wait, d))
        return d

    def history(self, conversation=None, limit=100):
        return [{"id": "m1", "conversation": conversation or "bob", "sender": "bob", "body": PERSIAN,
                 "limit": limit}]

    def quarantined(self, limit=100):
        return [{"id": "q1", "from": "bob", "reason": "forged", "received_at": 5, "limit": limit}]

    def block(self, name):
        return {"name": name, "blocked": True}

    def unblock(self, name):
        return {"name": name, "blocked": False, "was_blocked": True}

    def blocked(self):
        return ["mallory"]

    def subscribe(self, callback):
        self.subscribers.append(callback)

    def unsubscribe(self, callback):
        self.subscribers.remove(callback)

    def emit(self, event):
        for callback in list(self.subscribers):
            callback(event)


class Transport(StringTransport):
    """A StringTransport that can be half-closed, like a real unix socket."""

    write_closed = False

    def loseWriteConnection(self):
        self.write_closed = True


def connect(facade=None, uid=None, transport=None, clock=None):
    facade = facade or FakeFacade()
    factory = ControlFactory(facade, uid=os.getuid() if uid is None else uid, reactor=clock or task.Clock())
    proto = factory.buildProtocol(None)
    transport = transport or Transport()
    proto.makeConnection(transport)
    return facade, proto, transport


def send(proto, obj):
    line = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    proto.dataReceived(line + b"\n")


def lines(transport):
    data = transport.value()
    transport.clear()
    return [json.loads(line) for line in data.split(b"\n") if line]


# --- commands ---------------------------------------------------------------------------------------------------

COMMANDS = [
    ({"id": 1, "cmd": "ping"}, {"pong": True, "name": "alice"}),
    ({"id": 2, "cmd": "status"}, FakeFacade().status()),
    ({"id": "p", "cmd": "peers"}, [{"name": "bob", "tcp": ["10.0.0.2:4000"]}]),
    # issue 13, bug 7: users lists us too (the seed's session does), marked
    ({"id": "u", "cmd": "users"}, [{"name": "alice", "self": True, "online": True, "tcp": ["127.0.0.1:4000"],
                                    "udp": [], "fingerprint": None, "version": None},
                                   {"name": "bob", "tcp": ["10.0.0.2:4000"]}]),
    ({"id": 4, "cmd": "whois", "name": "bob"}, {"name": "bob", "reachability": {"link": "none", "direct": False}}),
    ({"id": 5, "cmd": "history"}, [{"id": "m1", "conversation": "bob", "sender": "bob", "body": PERSIAN,
                                    "limit": 100}]),
    ({"id": 6, "cmd": "history", "conversation": "carol", "limit": 5},
     [{"id": "m1", "conversation": "carol", "sender": "bob", "body": PERSIAN, "limit": 5}]),
    ({"id": 7, "cmd": "watch"}, {"watching": True}),
    ({"id": 8, "cmd": "unwatch"}, {"watching": False}),
    ({"id": 10, "cmd": "block", "name": "mallory"}, {"name": "mallory", "blocked": True}),
    ({"id": 11, "cmd": "unblock", "name": "mallory"}, {"name": "mallory", "blocked": False, "was_blocked": True}),
    ({"id": 12, "cmd": "blocked"}, ["mallory"]),
    ({"id": 9, "cmd": "quarantine", "limit": 3}, [{"id": "q1", "from": "bob", "reason": "forged", "received_at": 5,
                                                   "limit": 3}]),
]


@pytest.mark.parametrize("request_, result", COMMANDS, ids=[c[0]["cmd"] + str(c[0]["id"]) for c in COMMANDS])
def test_command_replies_with_its_result(request_, result):
    """Each command calls the facade and replies {"id", "ok": true, "result"} with the request's id."""
    _, proto, transport = connect()
    send(proto, request_)
    assert lines(transport) == [{"id": request_["id"], "ok": True, "result": result}]


def test_msg_calls_send_message_and_replies_when_it_fires():
    """msg passes to/text/wait to send_message and replies with its outcome once known."""
    facade, proto, transport = connect()
    send(proto, {"id": 1, "cmd": "msg", "to": "bob", "text": PERSIAN, "wait": 2.5})
    assert [s[:3] for s in facade.sent] == [("bob", PERSIAN, 2.5)]
    assert lines(transport) == []
    facade.sent[0][3].callback({"id": "m1", "to": "bob", "status": "queued", "via": "mailbox"})
    assert lines(transport) == [{"id": 1, "ok": True,
                                 "result": {"id": "m1", "to": "bob", "status": "queued", "via": "mailbox"}}]


def test_msg_without_wait_uses_the_facade_default():
    """Leaving out wait lets the daemon choose how long to wait for the acknowledgement."""
    facade, proto, _ = connect()
    send(proto, {"id": 1, "cmd": "msg", "to": "bob", "text": "hi"})
    assert facade.sent[0][2] == 10.0


def test_pipelined_replies_come_as_they_are_ready_matched_by_id():
    """Replies to pipelined requests are written when ready, possibly out of order, each with its id."""
    facade, proto, transport = connect()
    send(proto, {"id": 1, "cmd": "msg", "to": "bob", "text": "one"})
    send(proto, {"id": 2, "cmd": "msg", "to": "bob", "text": "two"})
    send(proto, {"id": 3, "cmd": "ping"})
    facade.sent[1][3].callback({"status": "delivered"})
    facade.sent[0][3].callback({"status": "queued"})
    assert [(r["id"], r["result"]) for r in lines(transport)] == [
        (3, {"pong": True, "name": "alice"}), (2, {"status": "delivered"}), (1, {"status": "queued"})]


def test_unicode_travels_exactly_and_the_wire_is_ascii():
    """Persian, emoji and even hostile characters reach the facade unchanged; every byte written is ASCII."""
    facade, proto, transport = connect()
    text = PERSIAN + HOSTILE
    proto.dataReceived(json.dumps({"id": 1, "cmd": "msg", "to": "bob", "text": text},
                                  ensure_ascii=False).encode("utf-8") + b"\n")
    facade.sent[0][3].callback({"echo": text})
    raw = transport.value()
    assert raw.isascii() and raw.count(b"\n") == 1
    assert facade.sent[0][1] == text and lines(transport)[0]["result"] == {"echo": text}


def test_crlf_and_blank_lines_are_accepted():
    """A client that ends lines with CRLF is understood; empty lines are ignored."""
    _, proto, transport = connect()
    proto.dataReceived(b'\n\r\n{"id": 1, "cmd": "ping"}\r\n')
    assert [r["id"] for r in lines(transport)] == [1]


# --- errors -----------------------------------------------------------------------------------------------------

BAD_REQUESTS = [
    (b"{not json", None, "bad_request", "not valid JSON"),
    (b"\xff\xfe", None, "bad_request", "not UTF-8"),
    (b"[1, 2]", None, "bad_request", "JSON object"),
    (b'{"id": 1}', 1, "bad_request", '"cmd"'),
    (b'{"id": true, "cmd": "ping"}', None, "bad_request", '"id"'),
    (b'{"id": 1.5, "cmd": "ping"}', None, "bad_request", '"id"'),
    (b'{"id": 1, "cmd": "launch"}', 1, "unknown_command", "launch"),
    (b'{"id": 1, "cmd": "whois"}', 1, "bad_request", "'name'"),
    (b'{"id": 1, "cmd": "whois", "name": 7}', 1, "bad_request", "string"),
    (b'{"id": 1, "cmd": "msg", "to": "bob"}', 1, "bad_request", "'text'"),
    (b'{"id": 1, "cmd": "msg", "text": "hi"}', 1, "bad_request", "'to'"),
    (b'{"id": 1, "cmd": "msg", "to": "bob", "text": "hi", "wait": -1}', 1, "bad_request", "wait"),
    (b'{"id": 1, "cmd": "msg", "to": "bob", "text": "hi", "wait": true}', 1, "bad_request", "number"),
    (b'{"id": 1, "cmd": "history", "limit": 0}', 1, "bad_request", "limit"),
    (b'{"id": 1, "cmd": "history", "limit": "5"}', 1, "bad_request", "integer"),
    (b'{"id": 1, "cmd": "history", "conversation": ["x"]}', 1, "bad_request", "string"),
    (b'{"id": 1, "cmd": "quarantine", "limit": 5000}', 1, "bad_request", "limit"),
    (b'{"id": 1, "cmd": "block"}', 1, "bad_request", "'name'"),
    (b'{"id": 1, "cmd": "preview"}', 1, "bad_request", "'tid'"),
    (b'{"id": 1, "cmd": "preview", "tid": "t", "index": -1}', 1, "bad_request", "index counts"),
    (b'{"id": 1, "cmd": "preview", "tid": "t", "index": "0"}', 1, "bad_request", "integer"),
]


@pytest.mark.parametrize("line, request_id, code, words", BAD_REQUESTS, ids=[b[0].decode("latin-1")
                                                                              for b in BAD_REQUESTS])
def test_bad_request_gets_a_clear_error_and_the_connection_stays_usable(line, request_id, code, words):
    """Malformed JSON, missing or mistyped arguments and unknown commands get an error reply saying what is
    wrong; the next request on the same connection works."""
    _, proto, transport = connect()
    proto.dataReceived(line + b"\n")
    send(proto, {"id": 99, "cmd": "ping"})
    error, after = lines(transport)
    assert error["id"] == request_id and error["ok"] is False and error["error"] == code
    assert words in error["message"]
    assert after["id"] == 99 and after["ok"] is True and not transport.disconnecting


def test_unknown_command_lists_the_commands():
    """The unknown_command error tells which commands exist."""
    _, proto, transport = connect()
    send(proto, {"id": 1, "cmd": "nope"})
    message = lines(transport)[0]["message"]
    for name in ("history", "msg", "peers", "ping", "status", "watch", "whois"):
        assert name in message


def test_p2pd_errors_carry_their_code_and_message():
    """A P2PDError from the facade becomes {"error": code, "message": message}."""
    _, proto, transport = connect()
    send(proto, {"id": 1, "cmd": "whois", "name": "zed"})
    assert lines(transport) == [{"id": 1, "ok": False, "error": "unknown_peer",
                                 "message": "unknown peer zed: nobody registered that name"}]


def test_error_details_are_included():
    """Details of a P2PDError (such as retry_after) are part of the reply."""
    facade, proto, transport = connect()
    send(proto, {"id": 1, "cmd": "msg", "to": "bob", "text": "x"})
    facade.sent[0][3].errback(P2PDError("slow down", retry_after=3))
    assert lines(transport) == [{"id": 1, "ok": False, "error": "error", "message": "slow down", "retry_after": 3}]


def test_exception_inside_the_facade_is_internal_logged_and_survived(monkeypatch):
    """A bug in the facade gives an "internal" reply and a logged traceback; the connection keeps working."""
    logged = []
    monkeypatch.setattr(control, "log", Logger(observer=logged.append))
    _, proto, transport = connect()
    send(proto, {"id": 1, "cmd": "whois", "name": "broken"})
    send(proto, {"id": 2, "cmd": "ping"})
    internal, pong = lines(transport)
    assert internal["id"] == 1 and internal["error"] == "internal" and "ZeroDivisionError" in internal["message"]
    assert pong["ok"] is True and not transport.disconnecting
    assert [e["log_failure"].value.__class__ for e in logged if "log_failure" in e] == [ZeroDivisionError]


def test_network_failure_is_reported_as_unavailable():
    """The registry not answering is "unavailable" (try again later), not an internal error."""
    _, proto, transport = connect()
    send(proto, {"id": 1, "cmd": "whois", "name": "slow-registry"})
    reply = lines(transport)[0]
    assert reply["error"] == "unavailable" and "try again" in reply["message"]


def test_unencodable_result_is_internal():
    """A result that is not JSON-able gives an "internal" error rather than a dead connection."""
    facade, proto, transport = connect()
    send(proto, {"id": 1, "cmd": "msg", "to": "bob", "text": "x"})
    facade.sent[0][3].callback({"bytes": b"\x00"})
    send(proto, {"id": 2, "cmd": "ping"})
    assert [(r["id"], r["ok"], r.get("error")) for r in lines(transport)] == [(1, False, "internal"),
                                                                              (2, True, None)]


def test_over_long_line_gets_an_error_and_the_connection_is_closed():
    """A request line over 1 MiB is answered with too_large and our side is closed for writing; nothing sent
    after it runs; a client that does not leave is cut off after the grace period."""
    clock = task.Clock()
    facade, proto, transport = connect(clock=clock)
    proto.dataReceived(b'{"id": 1, "cmd": "msg", "to": "bob", "text": "' + b"x" * (1 << 20) + b'"}\n'
                       + b'{"id": 2, "cmd": "ping"}\n')
    proto.dataReceived(b'{"id": 3, "cmd": "ping"}\n')
    assert lines(transport) == [{"id": None, "ok": False, "error": "too_large",
                                 "message": "request line longer than 1048576 bytes; closing"}]
    assert transport.write_closed and facade.sent == [] and not transport.disconnecting
    clock.advance(control.CLOSE_GRACE)
    assert transport.disconnected


def test_over_long_line_without_newline_is_refused_too():
    """Even without a newline, more than 1 MiB of buffered request closes the connection."""
    _, proto, transport = connect()
    for _ in range(5):
        proto.dataReceived(b"y" * (300 * 1024))
    assert lines(transport)[0]["error"] == "too_large" and transport.write_closed


def test_a_line_of_exactly_the_limit_is_accepted():
    """The limit is 1 MiB of request; a request of exactly that size is processed."""
    facade, proto, transport = connect()
    head = b'{"id": 1, "cmd": "msg", "to": "bob", "text": "'
    proto.dataReceived(head + b"z" * ((1 << 20) - len(head) - 2) + b'"}\n')
    assert len(facade.sent) == 1 and not transport.disconnecting


def test_reply_after_disconnect_is_dropped():
    """A reply that becomes ready after the client left is not written and does not fail."""
    facade, proto, transport = connect()
    send(proto, {"id": 1, "cmd": "msg", "to": "bob", "text": "x"})
    proto.connectionLost(None)
    transport.clear()
    facade.sent[0][3].callback({"status": "delivered"})
    assert transport.value() == b""


# --- events -----------------------------------------------------------------------------------------------------

def test_watch_streams_events_until_disconnect():
    """After watch, every facade event is one {"event": ...} line; connectionLost unsubscribes."""
    facade, proto, transport = connect()
    send(proto, {"id": 1, "cmd": "watch"})
    lines(transport)
    message = {"event": "message", "message": {"sender": "bob", "body": PERSIAN + HOSTILE}}
    facade.emit(message)
    facade.emit({"event": "peer", "name": "bob", "state": "offline"})
    assert lines(transport) == [message, {"event": "peer", "name": "bob", "state": "offline"}]
    proto.connectionLost(None)
    assert facade.subscribers == []


def test_watch_twice_subscribes_once_and_unwatch_stops_events():
    """watch is idempotent; unwatch stops the stream on a connection that stays open."""
    facade, proto, transport = connect()
    send(proto, {"id": 1, "cmd": "watch"})
    send(proto, {"id": 2, "cmd": "watch"})
    assert len(facade.subscribers) == 1
    send(proto, {"id": 3, "cmd": "unwatch"})
    lines(transport)
    facade.emit({"event": "peer", "name": "bob", "state": "online"})
    assert lines(transport) == [] and facade.subscribers == []


def test_events_are_only_for_watchers():
    """A connection that did not ask for events gets none."""
    facade, proto, transport = connect()
    _, other, other_transport = connect(facade)
    send(other, {"id": 1, "cmd": "watch"})
    facade.emit({"event": "peer", "name": "bob", "state": "online"})
    assert transport.value() == b"" and lines(other_transport)[-1]["event"] == "peer"


def test_a_watcher_that_does_not_read_gets_its_events_later_in_order():
    """While the transport's buffer is full (pauseProducing) events are held, then written in order."""
    facade, proto, transport = connect()
    send(proto, {"id": 1, "cmd": "watch"})
    lines(transport)
    transport.producer.pauseProducing()
    for n in range(3):
        facade.emit({"event": "peer", "name": "p%d" % n, "state": "online"})
    assert transport.value() == b""
    transport.producer.resumeProducing()
    assert [e["name"] for e in lines(transport)] == ["p0", "p1", "p2"]


def test_a_watcher_that_never_reads_is_disconnected(monkeypatch):
    """Held events are bounded: past the limit the watcher is dropped instead of growing the daemon's memory."""
    monkeypatch.setattr(control, "MAX_PENDING_EVENTS", 5)
    facade, proto, transport = connect()
    send(proto, {"id": 1, "cmd": "watch"})
    lines(transport)
    proto.pauseProducing()
    for n in range(6):
        facade.emit({"event": "peer", "name": "p%d" % n, "state": "online"})
    (error,) = lines(transport)
    assert error["error"] == "too_slow" and "did not read its events (6 waiting" in error["message"]
    assert transport.write_closed and facade.subscribers == [] and not proto.held


def test_a_watcher_that_never_reads_is_dropped_by_the_bytes_it_holds_too():
    """Issue 12, finding 12: two watchers that never read held the daemon's RSS from 58 to 995 MB before the
    10,000-event cut: the backlog is also bounded in bytes (4 MiB)."""
    facade, proto, transport = connect(clock=task.Clock())
    send(proto, {"id": 1, "cmd": "watch"})
    lines(transport)
    proto.pauseProducing()
    big = {"event": "message", "message": {"body": "x" * 16000}}
    for _ in range(control.MAX_PENDING_BYTES // 16000 + 2):
        facade.emit(big)
    assert proto.held_bytes == 0 and facade.subscribers == []
    assert lines(transport)[0]["error"] == "too_slow" and transport.write_closed


def test_while_paused_requests_wait():
    """Backpressure: while the client does not read, its further requests are not processed."""
    _, proto, transport = connect()
    proto.pauseProducing()
    send(proto, {"id": 1, "cmd": "ping"})
    assert transport.value() == b""
    proto.resumeProducing()
    assert lines(transport)[0]["id"] == 1


# --- who may connect --------------------------------------------------------------------------------------------

class CredTransport(Transport):
    """A transport whose socket reports SO_PEERCRED for a given uid."""

    def __init__(self, uid):
        super().__init__()
        self.uid = uid

    def getHandle(self):
        transport = self

        class Handle:
            def getsockopt(self, level, option, size):
                assert (level, size) == (control.socket.SOL_SOCKET, 12)
                return struct.pack("3i", 1234, transport.uid, transport.uid)

        return Handle()


def test_client_of_another_uid_is_refused():
    """SO_PEERCRED: a process running as another user gets an error line and the connection is closed."""
    facade, proto, transport = connect(uid=1000, transport=CredTransport(1001))
    send(proto, {"id": 1, "cmd": "status"})
    assert lines(transport) == [{"id": None, "ok": False, "error": "forbidden",
                                 "message": "this daemon belongs to another user"}]
    assert transport.write_closed and facade.subscribers == []


def test_client_of_the_same_uid_is_served():
    """The daemon's own user is served."""
    _, proto, transport = connect(uid=1000, transport=CredTransport(1000))
    send(proto, {"id": 1, "cmd": "ping"})
    assert lines(transport)[0]["ok"] is True


# --- the endpoint string ----------------------------------------------------------------------------------------

def test_control_endpoint_is_a_0600_unix_socket_with_a_lock_file():
    """The endpoint string names control.sock in the data dir with octal mode 600 and a lock file, quoting ':'
    and '=' in the path."""
    description = control_endpoint("/var/x:y=z")
    assert description == "unix:/var/x\\:y\\=z/control.sock:mode=600:lockfile=1"
    endpoint = endpoints.serverFromString(task.Clock(), description)
    assert (endpoint._address, endpoint._mode, endpoint._wantPID) == ("/var/x:y=z/control.sock", 0o600, True)


# --- on a real unix socket --------------------------------------------------------------------------------------

class LineClient(LineReceiver):
    delimiter = b"\n"

    def __init__(self):
        self.lines = defer.DeferredQueue()
        self.closed = defer.Deferred()

    def lineReceived(self, line):
        self.lines.put(json.loads(line))

    def connectionLost(self, reason):
        self.closed.callback(None)

    def ask(self, **request):
        self.sendLine(json.dumps(request).encode())


def data_dir_for(tmp_path):
    path = os.path.join(str(tmp_path), "alice")
    os.makedirs(path, mode=0o700)
    return path


@defer.inlineCallbacks
def listen(reactor, data_dir, facade):
    port = yield endpoints.serverFromString(reactor, control_endpoint(data_dir)).listen(ControlFactory(facade))
    return port


@defer.inlineCallbacks
def connect_client(reactor, data_dir):
    client = yield endpoints.connectProtocol(
        endpoints.UNIXClientEndpoint(reactor, os.path.join(data_dir, "control.sock")), LineClient())
    return client


@pytest_twisted.inlineCallbacks
def test_socket_is_0600_from_creation_in_a_0700_dir(tmp_path, monkeypatch):
    """Even under umask 000 the socket file is never wider than 0600: its mode is checked the moment before
    Twisted's chmod (that is, as bind created it) and after; the data dir is 0700; the umask comes back."""
    from twisted.internet import reactor

    data_dir = data_dir_for(tmp_path)
    sock = os.path.join(data_dir, "control.sock")
    seen = []
    real_chmod = os.chmod

    def spy(path, mode, *a, **kw):
        if os.fsdecode(path) == sock:
            seen.append(stat.S_IMODE(os.stat(sock).st_mode))
        return real_chmod(path, mode, *a, **kw)

    monkeypatch.setattr(os, "chmod", spy)
    old = os.umask(0)
    try:
        port = yield listen(reactor, data_dir, FakeFacade())
        seen.append(stat.S_IMODE(os.stat(sock).st_mode))
        yield task.deferLater(reactor, 0.01, lambda: None)
        assert os.umask(0) == 0  # restored to what it was before listening
    finally:
        os.umask(old)
    try:
        assert seen == [0o600, 0o600]
        assert stat.S_ISSOCK(os.stat(sock).st_mode)
        assert stat.S_IMODE(os.stat(data_dir).st_mode) == 0o700
    finally:
        yield port.stopListening()
    assert not os.path.exists(sock)


@pytest_twisted.inlineCallbacks
def test_two_clients_at_once(tmp_path):
    """One client watches while another sends: the watcher gets the event, the sender its reply."""
    from twisted.internet import reactor

    data_dir = data_dir_for(tmp_path)
    facade = FakeFacade()
    port = yield listen(reactor, data_dir, facade)
    try:
        watcher = yield connect_client(reactor, data_dir)
        sender = yield connect_client(reactor, data_dir)
        watcher.ask(id=1, cmd="watch")
        assert (yield watcher.lines.get())["result"] == {"watching": True}
        sender.ask(id=1, cmd="msg", to="bob", text=PERSIAN)
        sender.ask(id=2, cmd="ping")
        assert (yield sender.lines.get())["id"] == 2
        facade.emit({"event": "message", "message": {"sender": "alice", "body": PERSIAN}})
        facade.sent[0][3].callback({"status": "delivered"})
        assert (yield watcher.lines.get())["message"]["body"] == PERSIAN
        assert (yield sender.lines.get()) == {"id": 1, "ok": True, "result": {"status": "delivered"}}
        sender.transport.loseConnection()
        yield sender.closed
        watcher.transport.loseConnection()
        yield watcher.closed
        for _ in range(100):
            if not facade.subscribers:
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        assert facade.subscribers == []
    finally:
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_over_long_line_on_a_real_socket_is_answered_not_reset(tmp_path):
    """A client that sends 1.5 MiB without a newline reads the too_large error and then EOF (no
    ECONNRESET, although most of what it sent was never read); the daemon keeps serving others."""
    from twisted.internet import reactor

    data_dir = data_dir_for(tmp_path)
    port = yield listen(reactor, data_dir, FakeFacade())

    def flood():
        import socket

        with socket.socket(socket.AF_UNIX) as s:
            s.connect(os.path.join(data_dir, "control.sock"))
            try:
                s.sendall(b"x" * (3 << 19))
            except BrokenPipeError:
                pass
            return s.makefile("rb").read()

    try:
        answer = yield threads.deferToThread(flood)
        assert json.loads(answer) == {"id": None, "ok": False, "error": "too_large",
                                      "message": "request line longer than 1048576 bytes; closing"}
        client = yield connect_client(reactor, data_dir)
        client.ask(id=1, cmd="ping")
        assert (yield client.lines.get())["ok"] is True
        client.transport.loseConnection()
        yield client.closed
    finally:
        yield port.stopListening()


LISTENER = textwrap.dedent("""
    import sys
    from twisted.internet import endpoints, protocol, reactor
    from p2pd.peer.control import control_endpoint
    def ready(port):
        print("ready", flush=True)
    endpoints.serverFromString(reactor, control_endpoint(sys.argv[1])).listen(
        protocol.Factory.forProtocol(protocol.Protocol)).addCallback(ready)
    reactor.run()
""")


@pytest_twisted.inlineCallbacks
def test_stale_socket_of_a_killed_daemon_is_replaced(tmp_path):
    """A daemon killed with SIGKILL leaves control.sock and its lock behind; the next one listens anyway and
    serves clients. While the old one lives, a second listener is refused instead of stealing its socket."""
    from twisted.internet import reactor

    data_dir = data_dir_for(tmp_path)
    sock = os.path.join(data_dir, "control.sock")
    old = subprocess.Popen([sys.executable, "-c", LISTENER, data_dir], stdout=subprocess.PIPE, text=True)
    try:
        assert old.stdout.readline().strip() == "ready"
        with pytest.raises(net_error.CannotListenError):
            yield listen(reactor, data_dir, FakeFacade())
    finally:
        old.send_signal(signal.SIGKILL)
        old.wait()
        old.stdout.close()
    assert stat.S_ISSOCK(os.stat(sock).st_mode) and os.path.lexists(sock + ".lock")
    port = yield listen(reactor, data_dir, FakeFacade())
    try:
        client = yield connect_client(reactor, data_dir)
        client.ask(id=1, cmd="ping")
        assert (yield client.lines.get())["ok"] is True
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
        client.transport.loseConnection()
        yield client.closed
    finally:
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_release_stale_socket_when_the_lock_names_a_live_unrelated_pid(tmp_path):
    """A lock link naming a pid that is alive but not a daemon (pid reuse after a crash) blocks listening;
    release_stale_socket, called by the holder of the data dir lock, clears it and listening works."""
    from twisted.internet import reactor

    data_dir = data_dir_for(tmp_path)
    sock = os.path.join(data_dir, "control.sock")
    leftover = control.socket.socket(control.socket.AF_UNIX)
    leftover.bind(sock)
    leftover.close()
    os.symlink(str(os.getpid()), sock + ".lock")
    with pytest.raises(net_error.CannotListenError):
        yield listen(reactor, data_dir, FakeFacade())
    assert control.release_stale_socket(data_dir) is True
    assert not os.path.lexists(sock) and not os.path.lexists(sock + ".lock")
    assert control.release_stale_socket(data_dir) is False
    port = yield listen(reactor, data_dir, FakeFacade())
    yield port.stopListening()


def test_release_stale_socket_leaves_other_files_alone(tmp_path):
    """Only a socket and a lock link are removed: a regular file named control.sock stays."""
    data_dir = data_dir_for(tmp_path)
    with open(os.path.join(data_dir, "control.sock"), "w") as f:
        f.write("not a socket")
    assert control.release_stale_socket(data_dir) is False
    assert os.path.exists(os.path.join(data_dir, "control.sock"))


OTHER_USER_CLIENT = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(sys.argv[1])
    except OSError as e:
        print("connect", e.errno)
        sys.exit()
    s.sendall(b'{"id": 1, "cmd": "status"}\\n')
    print(s.makefile("rb").read().decode())
""")


@pytest.mark.skipif(os.getuid() != 0 or not os.path.exists("/usr/bin/python3"),
                    reason="needs root to run a client as another user")
@pytest_twisted.inlineCallbacks
def test_another_user_cannot_connect():
    """Another uid gets EACCES from the 0700 data dir; and if the permissions are opened up by mistake, the
    SO_PEERCRED check still refuses it with an error line and closes."""
    from twisted.internet import reactor

    top = tempfile.mkdtemp()
    os.chmod(top, 0o755)
    data_dir = os.path.join(top, "alice")
    os.makedirs(data_dir, mode=0o700)
    sock = os.path.join(data_dir, "control.sock")
    facade = FakeFacade()
    port = yield listen(reactor, data_dir, facade)

    def as_nobody():
        return subprocess.run(["/usr/bin/python3", "-I", "-c", OTHER_USER_CLIENT, sock], user=65534, group=65534,
                              capture_output=True, text=True, timeout=30, cwd="/")

    try:
        denied = yield threads.deferToThread(as_nobody)
        assert denied.stdout.strip() == "connect 13", denied.stderr
        os.chmod(data_dir, 0o755)
        os.chmod(sock, 0o666)
        refused = yield threads.deferToThread(as_nobody)
        assert refused.returncode == 0, refused.stderr
        reply = json.loads(refused.stdout.strip())
        assert reply == {"id": None, "ok": False, "error": "forbidden",
                         "message": "this daemon belongs to another user"}
    finally:
        yield port.stopListening()
        subprocess.run(["rm", "-rf", top])


# --- p2pctl against the real protocol ---------------------------------------------------------------------------

@pytest_twisted.inlineCallbacks
def test_p2pctl_talks_to_the_real_control_socket(tmp_path):
    """End to end: the p2pctl process finds the socket by --data-dir, sends a message and maps "queued" to
    exit code 3; history prints Persian unchanged and a hostile sender name escaped."""
    from twisted.internet import reactor

    data_dir = data_dir_for(tmp_path)

    class Facade(FakeFacade):
        def send_message(self, to, text, wait=10.0):
            return defer.succeed({"id": "m9", "to": to, "status": "queued", "via": "mailbox"})

        def history(self, conversation=None, limit=100):
            return [{"sender": "bob" + HOSTILE, "ts": 0, "body": PERSIAN, "direction": "in"}]

    port = yield listen(reactor, data_dir, Facade())

    def p2pctl(*argv):
        return subprocess.run([sys.executable, "-m", "p2pd.cli.main", "--data-dir", data_dir, *argv],
                              capture_output=True, timeout=60)

    try:
        sent = yield threads.deferToThread(p2pctl, "msg", "bob", "hello", "there")
        assert sent.returncode == 3, sent.stderr
        assert sent.stdout.decode() == "bob is offline: message queued, it will be delivered when bob is back\n"
        shown = yield threads.deferToThread(p2pctl, "history", "bob")
        assert shown.returncode == 0, shown.stderr
        out = shown.stdout.decode("utf-8")
        assert PERSIAN in out and "\x1b" not in out and "\u202e" not in out and out.count("\n") == 1
    finally:
        yield port.stopListening()


class FakeTransfers:
    """The transfer commands' side of the facade: send/get return Deferreds whose cancel() cancels the
    transfer (what Transfers does)."""

    def __init__(self):
        self.started, self.cancelled, self.transports = [], [], []

    def _start(self, kind, progress):
        d = defer.Deferred(lambda d: self.cancelled.append(kind))
        self.started.append((kind, progress, d))
        return d

    def send(self, to, paths, progress=None, transport=None):
        self.transports.append(transport)
        return self._start("send", progress)

    def get(self, peer, name, progress=None, transport=None):
        self.transports.append(transport)
        return self._start("get", progress)


def test_send_and_get_pass_the_transport_asked_for():
    facade = FakeFacade()
    facade.transfers = FakeTransfers()
    _, proto, transport = connect(facade)
    send(proto, {"id": 1, "cmd": "send", "to": "bob", "paths": ["/tmp/x"], "transport": "udp"})
    send(proto, {"id": 2, "cmd": "get", "peer": "bob", "name": "x"})
    assert facade.transfers.transports == ["udp", None]


@pytest.mark.parametrize("request_", [{"id": 1, "cmd": "send", "to": "bob", "paths": ["/tmp/x"]},
                                      {"id": 1, "cmd": "get", "peer": "bob", "name": "x"}])
def test_a_send_or_get_relays_progress_and_is_cancelled_when_the_client_leaves(request_):
    """send/get write progress lines for their request while they run; closing the connection cancels the
    transfer through its Deferred, and nothing more is written."""
    facade = FakeFacade()
    facade.transfers = FakeTransfers()
    _, proto, transport = connect(facade)
    send(proto, request_)
    ((kind, progress, d),) = facade.transfers.started
    progress({"done": 5})
    assert lines(transport) == [{"id": 1, "progress": {"done": 5}}]
    proto.connectionLost(None)
    assert facade.transfers.cancelled == [kind] and proto.running == {}
    assert transport.value() == b""


def test_a_finished_send_replies_and_is_forgotten():
    facade = FakeFacade()
    facade.transfers = FakeTransfers()
    _, proto, transport = connect(facade)
    send(proto, {"id": 2, "cmd": "send", "to": "bob", "paths": ["/tmp/x"]})
    facade.transfers.started[0][2].callback({"tid": "t", "status": "done"})
    assert lines(transport) == [{"id": 2, "ok": True, "result": {"tid": "t", "status": "done"}}]
    assert proto.running == {}
    proto.connectionLost(None)
    assert facade.transfers.cancelled == []


def test_history_with_a_peer_shows_the_files_exchanged_with_it_by_time():
    """Issue 13: sent and received files are part of the conversation."""
    from p2pd.peer.control_commands import with_files
    messages = [{"id": "m1", "ts": 100, "body": "here it comes"}, {"id": "m2", "ts": 300, "body": "got it?"}]
    transfers = [{"tid": "t1", "peer": "bob", "direction": "out", "status": "done", "finished": 200},
                 {"tid": "t2", "peer": "bob", "direction": "in", "status": "failed", "finished": 250},
                 {"tid": "t3", "peer": "carol", "direction": "in", "status": "done", "finished": 260},
                 {"tid": "t4", "peer": "bob", "direction": "in", "status": "offered", "created": 400}]
    merged = with_files(messages, "bob", transfers, 100)
    assert [e.get("id") or e["tid"] for e in merged] == ["m1", "t1", "m2", "t4"]
    assert merged[1]["kind"] == "file" and merged[1]["ts"] == 200
    assert [e.get("id") or e["tid"] for e in with_files(messages, "bob", transfers, 2)] == ["m2", "t4"]


def test_preview_asks_the_transfers_for_a_kept_preview_and_says_when_there_is_none():
    """preview passes tid and index (0 for the first file; none: the first with a preview) to the transfers,
    and a transfer without one is a not_found error whose message says why."""
    from p2pd.errors import NotFound

    class Previews(FakeTransfers):
        def preview(self, tid, index=None):
            if tid == "none":
                raise NotFound("notes.txt has no preview: the sender did not offer it as an image")
            return {"tid": tid, "index": index, "jpeg": "/9j/"}

    facade = FakeFacade()
    facade.transfers = Previews()
    _, proto, transport = connect(facade)
    send(proto, {"id": 1, "cmd": "preview", "tid": "t1"})
    send(proto, {"id": 2, "cmd": "preview", "tid": "t1", "index": 1})
    send(proto, {"id": 3, "cmd": "preview", "tid": "none"})
    first, second, missing = lines(transport)
    assert first["result"] == {"tid": "t1", "index": None, "jpeg": "/9j/"} and second["result"]["index"] == 1
    assert missing["ok"] is False and missing["error"] == "not_found" and "has no preview" in missing["message"]
