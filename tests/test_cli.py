"""p2pctl (p2pd.cli) against a small fake daemon: a thread serving a plain unix socket with canned replies.

Covers finding the daemon, exit codes, --json, what people see (tables, history, events) and that nothing a
peer sends can reach the terminal as a control or bidi character, and chat fed from a pipe."""

import io
import json
import os
import pty
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from p2pd.cli import exits
from p2pd.cli.main import main
from p2pd.cli.sanitize import clean, json_line, table, width

HOSTILE = "\x1b[1A\r\n\x85\u2028\u202e\x07"
RAW_BAD = ["\x1b", "\r", "\x85", "\u2028", "\u2029", "\u202e", "\u2066", "\x07", "\x9b"]
PERSIAN = "سلام، حالت چطوره؟ می‌خواهم 👋🏽👨‍👩‍👧"

BOB = {"name": "bob", "key": "k", "online": True, "fingerprint": "SHA256:abcdefabcdefabcdefabcdef",
       "tcp": ["10.0.0.2:4000"], "udp": ["10.0.0.2:4001"], "version": "0.1"}
STATUS = {"name": "alice", "fingerprint": "SHA256:xyz", "data_dir": "/d", "version": "0.1",
          "addresses": {"tcp": ["10.0.0.1:4000"], "udp": ["10.0.0.1:4001"], "public": None},
          "registry": {"url": "http://reg:8080", "state": "online", "message": None}, "outbox": 2, "links": []}


def ok(result):
    return {"ok": True, "result": result}


def fail(code, message):
    return {"ok": False, "error": code, "message": message}


def default_msg(request):
    text = request["text"]
    if request["to"] == "zed":
        return fail("unknown_peer", "unknown peer zed: nobody registered that name")
    status = "queued" if "offline" in text else "delivered"
    return ok({"id": "m%d" % request["id"], "to": request["to"], "status": status,
               "via": "mailbox" if status == "queued" else "direct"})


class FakeDaemon:
    """A control socket with canned replies. ``handlers[cmd](request)`` returns the reply body (or None for no
    reply at all); ``push(event)`` sends an event to every connection that asked to watch."""

    def __init__(self, path):
        self.path = path
        self.requests = []
        self.handlers = {
            "ping": lambda r: ok({"pong": True, "name": "alice"}),
            "status": lambda r: ok(STATUS),
            "peers": lambda r: ok([BOB]),
            "whois": lambda r: ok(dict(BOB, reachability={"link": "none", "direct": False}))
            if r.get("name") == "bob" else fail("unknown_peer", "unknown peer %s: nobody registered that name"
                                                % r.get("name")),
            "msg": default_msg,
            "history": lambda r: ok([]),
            "watch": self.watch,
        }
        self.watchers = []
        self.conns = []
        self.lock = threading.Lock()
        self.watching = threading.Event()
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(16)
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn):
        try:
            for line in conn.makefile("rb"):
                request = json.loads(line)
                with self.lock:
                    self.requests.append(request)
                handler = self.handlers.get(request["cmd"], lambda r: fail("unknown_command", "unknown"))
                self.current = conn
                reply = handler(request)
                if reply is not None:
                    self.send(conn, dict(reply, id=request["id"]))
        except (OSError, ValueError):
            pass

    def watch(self, request):
        self.watchers.append(self.current)
        self.watching.set()
        return ok({"watching": True})

    def send(self, conn, obj):
        with self.lock:
            try:
                conn.sendall(json.dumps(obj).encode() + b"\n")
            except OSError:
                pass

    def push(self, event):
        for conn in list(self.watchers):
            self.send(conn, event)

    def commands(self):
        return [r["cmd"] for r in self.requests]

    def close(self):
        self.sock.close()
        for conn in self.conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()


@pytest.fixture
def home():
    """A short XDG_DATA_HOME (unix socket paths must stay under 108 bytes) and an env pointing at it."""
    top = tempfile.mkdtemp(prefix="p2c", dir="/tmp")
    yield top, {"XDG_DATA_HOME": top, "HOME": top}
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def daemons(home):
    top, env = home
    started = []

    def start(name="alice"):
        daemon = FakeDaemon(os.path.join(top, "p2pd", name, "control.sock"))
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.close()


@pytest.fixture
def daemon(daemons):
    return daemons("alice")


@pytest.fixture
def run(home, capsys, monkeypatch):
    """Run main() in-process: returns (exit code, stdout, stderr)."""
    _, env = home

    def run(*argv, stdin=None, extra_env=None):
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin or ""))
        code = main(list(argv), env=dict(env, **(extra_env or {})))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def assert_terminal_safe(text):
    for bad in RAW_BAD:
        assert bad not in text, "raw %r in output" % bad


# --- sanitizing -------------------------------------------------------------------------------------------------

def test_clean_escapes_control_separator_and_bidi_characters():
    """C0, C1, DEL, U+2028/2029 and bidi overrides/isolates become visible escapes on the same line."""
    assert clean(HOSTILE) == "\\x1b[1A\\r\\n\\x85\\u2028\\u202e\\x07"
    assert clean("a\x00b\x7fc\x9bd\u2066e\u2069\tf") == "a\\x00b\\x7fc\\x9bd\\u2066e\\u2069\\tf"
    assert clean("\ud800") == "\\ud800"


def test_clean_leaves_persian_arabic_and_emoji_alone():
    """Right-to-left text with its ZWNJ, emoji with skin tones and ZWJ sequences print unchanged."""
    for text in (PERSIAN, "مرحبا بالعالم", "\u200fRLM ok\u200e", "plain ascii \\x1b stays"):
        assert clean(text) == text


def test_json_line_is_exact_but_terminal_safe():
    """--json output decodes to exactly the original data, yet contains no raw control or bidi character."""
    data = {"sender": "bob" + HOSTILE, "body": PERSIAN + "\u2029\u2067x\x7f\ud83d"}
    line = json_line(data)
    assert json.loads(line) == data
    assert "\n" not in line and PERSIAN in line
    assert_terminal_safe(line)


def test_width_and_table_alignment_count_columns_not_code_points():
    """Wide emoji take two columns and combining marks none, so table columns line up on screen."""
    assert width("ab") == 2 and width("👋") == 2 and width("e\u0301") == 1
    lines = table(("NAME", "X"), [("👋👋", "1"), ("bob", "2")])
    assert [width(line.split("  ")[0].rstrip()) for line in lines] == [4, 4, 3]
    assert [line.index(c) for line, c in zip(lines[1:], "12")] == [len("👋👋  "), len("bob   ")]


# --- finding the daemon -----------------------------------------------------------------------------------------

def test_no_daemon_says_how_to_start_one(run, home):
    """With no daemon anywhere: exit 69 and the command that starts one."""
    code, out, err = run("peers")
    assert code == exits.NO_DAEMON == 69
    from p2pd.cli.client import start_hint
    top = home[0] if isinstance(home, tuple) else home
    assert err.startswith("p2pctl: no p2pd daemon is running (looked in %s/p2pd" % top), err
    assert err.endswith("--data-dir DIR names another); %s\n" % start_hint()), err


def test_the_start_hint_works_as_typed_with_or_without_the_venv_on_path(tmp_path):
    """Issue 13, bug 3: the hint said `twistd ...`, which is not on PATH after ./dev (it lives in .venv/bin)."""
    import shlex

    from p2pd.cli.client import program, start_hint
    venv_bin = os.path.dirname(sys.executable)
    assert program("twistd", path=venv_bin) == "twistd"
    assert program("twistd", path=str(tmp_path)) == shlex.quote(os.path.join(venv_bin, "twistd"))
    command = shlex.split(start_hint(path=str(tmp_path)).split(": ", 1)[1])
    out = subprocess.run(command[:3] + ["--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--role" in out.stdout, out.stderr


def test_stale_socket_does_not_count_as_a_daemon(run, home):
    """A control.sock that nobody listens on (a killed daemon's) is not a running daemon."""
    top, _ = home
    path = os.path.join(top, "p2pd", "ghost", "control.sock")
    os.makedirs(os.path.dirname(path))
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.close()
    assert run("peers")[0] == exits.NO_DAEMON


def test_the_only_daemon_is_found(run, daemons, home):
    """Exactly one live daemon (next to a stale socket): it is used without options."""
    top, _ = home
    daemon = daemons("alice")
    stale = os.path.join(top, "p2pd", "ghost", "control.sock")
    os.makedirs(os.path.dirname(stale))
    s = socket.socket(socket.AF_UNIX)
    s.bind(stale)
    s.close()
    code, out, _ = run("status")
    assert code == 0 and out.startswith("name:        alice\n")
    assert daemon.commands() == ["status"]


def test_several_daemons_need_a_name(run, daemons):
    """Two live daemons and no choice: exit 2, naming both and how to choose."""
    daemons("alice")
    daemons("bob")
    code, out, err = run("peers")
    assert code == exits.USAGE
    assert "several p2pd daemons are running (alice, bob): choose one with --name NAME" in err


@pytest.mark.parametrize("how", ["--name", "--data-dir", "P2PD_DATA_DIR", "P2PD_NAME"])
def test_explicit_choice_picks_the_daemon(run, daemons, home, how):
    """--name, --data-dir, $P2PD_DATA_DIR and $P2PD_NAME each select one of several daemons."""
    top, _ = home
    alice, bob = daemons("alice"), daemons("bob")
    bob_dir = os.path.join(top, "p2pd", "bob")
    argv, extra = {
        "--name": (["--name", "bob"], {}), "--data-dir": (["--data-dir", bob_dir], {}),
        "P2PD_DATA_DIR": ([], {"P2PD_DATA_DIR": bob_dir}), "P2PD_NAME": ([], {"P2PD_NAME": "bob"}),
    }[how]
    assert run(*argv, "peers", extra_env=extra)[0] == 0
    assert bob.commands() == ["peers"] and alice.commands() == []


def test_precedence_data_dir_then_name_then_environment(run, daemons, home):
    """--data-dir beats --name, which beats the environment variables."""
    top, _ = home
    alice, bob, carol = daemons("alice"), daemons("bob"), daemons("carol")
    env = {"P2PD_DATA_DIR": os.path.join(top, "p2pd", "carol"), "P2PD_NAME": "carol"}
    run("--data-dir", os.path.join(top, "p2pd", "alice"), "--name", "bob", "peers", extra_env=env)
    run("--name", "bob", "peers", extra_env=env)
    run("peers", extra_env=env)
    run("peers", extra_env={"P2PD_NAME": "bob"})
    assert (alice.commands(), bob.commands(), carol.commands()) == (["peers"], ["peers", "peers"], ["peers"])


def test_named_daemon_not_running_says_how_to_start_it(run, daemon):
    """--name bob with no bob daemon: exit 69 and the exact command for bob, even though alice runs."""
    code, _, err = run("--name", "bob", "peers")
    assert code == exits.NO_DAEMON
    assert "no p2pd daemon is running for bob" in err
    assert "start it with: twistd -n p2pd --role=peer --name=bob" in err


def test_invalid_name_option_is_a_usage_error(run):
    """--name ../etc is refused before any path is built from it."""
    code, _, err = run("--name", "../etc", "peers")
    assert code == exits.USAGE and "invalid name" in err


# --- exit codes and output --------------------------------------------------------------------------------------

def test_help_documents_the_exit_codes(run):
    """p2pctl --help lists every exit code."""
    code, out, _ = run("--help")
    assert code == 0
    for line in ("0   ok", "1   other error", "2   usage", "3   peer offline", "4   unknown peer",
                 "69  no p2pd daemon", "75  the daemon, the registry or the peer is unavailable right now"):
        assert line in out


def test_usage_error_exits_2(run):
    """A missing argument is a usage error."""
    assert run("msg", "bob")[0] == exits.USAGE
    assert run("frobnicate")[0] == exits.USAGE


def test_msg_delivered_exits_0(run, daemon):
    """msg joins its words, waits for the outcome and exits 0 when delivered."""
    code, out, _ = run("msg", "bob", "hello", PERSIAN)
    assert (code, out) == (0, "delivered to bob\n")
    request = daemon.requests[-1]
    assert (request["cmd"], request["to"], request["text"]) == ("msg", "bob", "hello " + PERSIAN)
    assert 0 < request["wait"] <= 10


def test_msg_to_offline_peer_exits_3_and_says_it_is_queued(run, daemon):
    """A queued message is exit 3 with the plain explanation."""
    code, out, _ = run("msg", "bob", "are you offline?")
    assert code == exits.QUEUED == 3
    assert out == "bob is offline: message queued, it will be delivered when bob is back\n"


def test_msg_to_unknown_peer_exits_4(run, daemon):
    """An unknown peer is exit 4, with the daemon's message and a hint."""
    code, out, err = run("msg", "zed", "hi")
    assert code == exits.UNKNOWN_PEER == 4 and out == ""
    assert err == "p2pctl: unknown peer zed: nobody registered that name; p2pctl peers lists who is online\n"


@pytest.mark.parametrize("error, expected", [("unavailable", 75), ("store_unavailable", 75), ("rate_limited", 75),
                                             ("bad_request", 2), ("invalid_name", 2), ("internal", 1),
                                             ("identity_mismatch", 1)])
def test_daemon_error_codes_map_to_exit_codes(run, daemon, error, expected):
    """Daemon error codes become the documented exit codes."""
    daemon.handlers["whois"] = lambda r: fail(error, "it went wrong")
    code, _, err = run("whois", "bob")
    assert code == expected and "it went wrong" in err


def test_daemon_that_does_not_answer_exits_75(run, daemon):
    """No reply within --timeout: exit 75, saying so."""
    daemon.handlers["peers"] = lambda r: None
    code, _, err = run("--timeout", "0.3", "peers")
    assert code == exits.TEMPFAIL and "did not answer within 0.3 seconds" in err


def test_daemon_going_away_mid_request_exits_75(run, daemon):
    """The daemon closing the connection before replying: exit 75."""

    def vanish(request):
        daemon.current.shutdown(socket.SHUT_RDWR)

    daemon.handlers["peers"] = vanish
    code, _, err = run("peers")
    assert code == exits.TEMPFAIL and "closed the connection" in err


def test_json_output_and_json_errors(run, daemon):
    """--json prints the raw result as JSON; an error is a JSON object too, with the same exit code."""
    code, out, _ = run("--json", "peers")
    assert code == 0 and json.loads(out) == [BOB]
    code, out, _ = run("msg", "zed", "x", "--json")
    assert code == 4
    assert json.loads(out) == {"ok": False, "error": "unknown_peer",
                               "message": "unknown peer zed: nobody registered that name"}
    code, out, _ = run("--json", "msg", "bob", "offline")
    assert code == 3 and json.loads(out)["status"] == "queued"


def test_peers_table_is_aligned(run, daemon):
    """peers prints an aligned table with a header."""
    daemon.handlers["peers"] = lambda r: ok([BOB, dict(BOB, name="carol-the-long", tcp=["[::1]:5"], version=None)])
    code, out, _ = run("peers")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["NAME", "TCP", "UDP", "FINGERPRINT", "VERSION"]
    assert len({line.index(col) for line, col in zip(lines, ["TCP", "10.0.0.2:4000", "[::1]:5"])}) == 1
    assert run("peers")[0] == 0


def test_no_peers_online(run, daemon):
    daemon.handlers["peers"] = lambda r: ok([])
    assert run("peers")[1] == "no other peer is online\n"


def test_status_and_whois_for_people(run, daemon):
    """status shows name, addresses, registry state and the queue; whois shows the record and reachability."""
    out = run("status")[1]
    for text in ("alice", "10.0.0.1:4000", "http://reg:8080 (online)", "2 message(s) waiting"):
        assert text in out
    out = run("whois", "bob")[1]
    assert "online:      yes" in out and "link:        none" in out and "10.0.0.2:4000" in out
    assert run("whois", "nobody")[0] == 4


def test_status_says_when_mailbox_messages_were_set_aside(run, daemon):
    assert "quarantined" not in run("status")[1]
    daemon.handlers["status"] = lambda r: ok(dict(STATUS, quarantined=2))
    assert "quarantined: 2 mailbox message(s) set aside: p2pctl quarantine" in run("status")[1]


def test_history_shows_time_sender_text_and_keeps_unicode(run, daemon):
    """history PEER prints "[time] sender: text"; Persian and emoji come out byte for byte."""
    ts = 1700000000000
    daemon.handlers["history"] = lambda r: ok([
        {"sender": "bob", "recipient": "alice", "ts": ts, "body": PERSIAN, "direction": "in"},
        {"sender": "alice", "recipient": "bob", "ts": ts, "body": "ok", "direction": "out", "status": "queued"}])
    code, out, _ = run("history", "bob", "--limit", "5")
    assert daemon.requests[-1] == {"id": 1, "cmd": "history", "conversation": "bob", "limit": 5}
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts / 1000))
    assert out.encode("utf-8") == ("[%s] bob: %s\n[%s] alice: ok (in the mailbox, not collected yet)\n"
                                   % (stamp, PERSIAN, stamp)).encode()


def test_quarantine_lists_what_was_set_aside_and_why(run, daemon):
    ts = 1700000000000
    daemon.handlers["quarantine"] = lambda r: ok([{"id": "0123456789abcdef", "from": "bob", "reason": "bob's key "
                                                   "changed", "received_at": ts}])
    code, out, _ = run("quarantine", "--limit", "5")
    assert code == 0 and daemon.requests[-1] == {"id": 1, "cmd": "quarantine", "limit": 5}
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts / 1000))
    assert out.startswith("[%s] from bob: bob's key changed (mailbox item " % stamp)
    daemon.handlers["quarantine"] = lambda r: ok([])
    assert run("quarantine")[1] == "nothing quarantined\n"
    assert run("quarantine", "--limit", "0")[0] == 2


def test_block_unblock_and_blocked(run, daemon):
    daemon.handlers["block"] = lambda r: ok({"name": r["name"], "blocked": True})
    daemon.handlers["unblock"] = lambda r: ok({"name": r["name"], "blocked": False, "was_blocked": r["name"] == "eve"})
    daemon.handlers["blocked"] = lambda r: ok(["eve"])
    code, out, _ = run("block", "eve")
    assert code == 0 and out.startswith("blocked eve: its links, messages, files and mailbox deposits are refused")
    assert daemon.requests[-1] == {"id": 1, "cmd": "block", "name": "eve"}
    assert run("blocked")[1] == "eve\n"
    assert run("unblock", "eve")[1] == "unblocked eve\n"
    assert run("unblock", "bob")[1] == "bob was not blocked\n"
    daemon.handlers["blocked"] = lambda r: ok([])
    assert run("blocked")[1] == "nobody is blocked\n"


def test_history_of_everything_names_the_recipient(run, daemon):
    """Without a peer, outgoing lines say whom they went to."""
    daemon.handlers["history"] = lambda r: ok([{"sender": "alice", "recipient": "bob", "ts": 0, "body": "x",
                                                "direction": "out", "status": "delivered"}])
    assert run("history")[1].endswith("] alice -> bob: x\n")
    assert "conversation" not in daemon.requests[-1]


def test_hostile_strings_never_reach_the_terminal_raw(run, daemon):
    """Names and messages with ESC[1A\\r, \\n, U+0085, U+2028, U+202E and BEL print as visible escapes, one line
    per item, in peers, whois, history and errors; the Persian next to them is unchanged."""
    evil = "eve" + HOSTILE
    daemon.handlers["peers"] = lambda r: ok([dict(BOB, name=evil, tcp=[HOSTILE], version=HOSTILE)])
    daemon.handlers["whois"] = lambda r: ok(dict(BOB, name=evil, observed=HOSTILE,
                                                 reachability={"last_error": HOSTILE}))
    daemon.handlers["history"] = lambda r: ok([{"sender": evil, "ts": 0, "body": PERSIAN + HOSTILE,
                                                "direction": "in"}])
    daemon.handlers["msg"] = lambda r: fail("unknown_peer", "unknown peer " + evil)
    outputs = []
    for argv, lines in ((["peers"], 2), (["whois", "eve"], None), (["history"], 1), (["msg", "eve", "x"], 0)):
        code, out, err = run(*argv)
        assert_terminal_safe(out + err)
        if lines is not None:
            assert out.count("\n") == lines
        outputs.append(out + err)
    assert "eve\\x1b[1A\\r\\n\\x85\\u2028\\u202e\\x07" in outputs[0]
    assert PERSIAN + "\\x1b" in outputs[2]


def test_json_output_is_exact_and_terminal_safe(run, daemon):
    """--json keeps hostile data exact for scripts yet prints no raw control or bidi character."""
    record = [dict(BOB, name="eve" + HOSTILE, note=PERSIAN)]
    daemon.handlers["peers"] = lambda r: ok(record)
    out = run("--json", "peers")[1]
    assert_terminal_safe(out)
    assert json.loads(out) == record and PERSIAN in out


# --- watch ------------------------------------------------------------------------------------------------------

def run_watch(run, daemon, events, *argv):
    def feed():
        daemon.watching.wait(10)
        for event in events:
            daemon.push(event)
        time.sleep(0.2)
        daemon.close()

    threading.Thread(target=feed, daemon=True).start()
    return run(*argv, "watch")


EVENTS = [
    {"event": "message", "message": {"sender": "bob", "recipient": "alice", "ts": 0, "body": PERSIAN,
                                     "direction": "in"}},
    {"event": "message", "message": {"sender": "eve" + HOSTILE, "recipient": "alice", "ts": 0,
                                     "body": HOSTILE, "direction": "in"}},
    {"event": "delivered", "id": "m1", "to": "bob", "via": "direct"},
    {"event": "queued", "id": "m2", "to": "carol", "reason": "carol is offline"},
    {"event": "peer", "name": "bob", "state": "offline"},
    {"event": "peer", "name": HOSTILE, "state": HOSTILE},
    {"event": "registry", "state": "unreachable", "message": "connection refused"},
    {"event": "something-new", "x": HOSTILE},
]


def test_watch_prints_one_safe_line_per_event(run, daemon):
    """watch prints each event on exactly one line, hostile ones escaped, Persian unchanged; when the daemon
    goes away it exits 75."""
    code, out, err = run_watch(run, daemon, EVENTS)
    assert code == exits.TEMPFAIL and "closed the connection" in err
    lines = out.splitlines()
    assert len(lines) == len(EVENTS) and out.count("\n") == len(EVENTS)
    assert_terminal_safe(out)
    assert lines[0].endswith("] Private message from bob: " + PERSIAN)
    assert "delivered to bob (direct)" in lines[2] and "bob is offline" in lines[4]
    assert "registry unreachable: connection refused" in lines[6]


def test_watch_json_is_one_object_per_line(run, daemon):
    """watch --json prints each event as one JSON object per line, exactly as sent."""
    code, out, _ = run_watch(run, daemon, EVENTS, "--json")
    objects = [json.loads(line) for line in out.splitlines()]
    assert objects[:-1] == EVENTS and code == 75
    assert objects[-1] == {"ok": False, "error": "unavailable", "message": "the daemon closed the connection"}
    assert_terminal_safe(out)


# --- chat from a pipe -------------------------------------------------------------------------------------------

def test_chat_from_a_pipe_sends_every_line_in_order_and_exits_0(run, daemon):
    """Each stdin line is a message, sent in order (the next after the previous is acknowledged); exit 0 when
    all were delivered."""
    replies = []

    def slow_msg(request):
        time.sleep(0.05)
        replies.append(request["text"])
        return default_msg(request)

    daemon.handlers["msg"] = slow_msg
    lines = ["first", PERSIAN, "", "third\r", "last without newline"]
    code, out, err = run("chat", "bob", stdin="\n".join(lines))
    assert code == 0, err
    sent = [r["text"] for r in daemon.requests if r["cmd"] == "msg"]
    assert sent == replies == ["first", PERSIAN, "third", "last without newline"]
    assert out.splitlines() == ["delivered: first", "delivered: " + PERSIAN, "delivered: third",
                                "delivered: last without newline"]


def test_chat_exits_3_when_something_was_queued(run, daemon):
    """If any line was only queued (peer offline), chat says so and exits 3."""
    code, out, _ = run("chat", "bob", stdin="hi\nyou seem offline\nbye\n")
    assert code == exits.QUEUED
    assert out.splitlines() == ["delivered: hi", "queued: you seem offline", "delivered: bye",
                                "bob is offline: 1 message(s) queued, they will be delivered when bob is back"]


def test_chat_with_unknown_peer_stops_and_exits_4(run, daemon):
    """An unknown peer ends the chat before any line is tried, with exit 4 and the reason, also with no input
    at all (issue 13, bug 8: `p2pctl chat nosuchpeer </dev/null` exited 0 without a word)."""
    for stdin in ("a\nb\n", ""):
        code, out, err = run("chat", "zed", stdin=stdin)
        assert code == exits.UNKNOWN_PEER
        assert [r["text"] for r in daemon.requests if r["cmd"] == "msg"] == []
        assert "unknown peer zed" in err


def test_chat_goes_on_when_the_registry_cannot_say_who_the_peer_is(run, daemon):
    daemon.handlers["whois"] = lambda r: fail("registry_unavailable", "the registry does not answer")
    code, out, _ = run("chat", "bob", stdin="hi\n")
    assert code == 0 and out.splitlines() == ["delivered: hi"]


def test_chat_prints_what_the_peer_says_meanwhile(run, daemon):
    """Messages from the peer that arrive during a piped chat are printed, sanitized."""

    def msg(request):
        daemon.push({"event": "message", "message": {"sender": "bob", "recipient": "alice", "ts": 0,
                                                     "body": "reply" + HOSTILE, "direction": "in"}})
        daemon.push({"event": "message", "message": {"sender": "carol", "recipient": "alice", "ts": 0,
                                                     "body": "not this chat", "direction": "in"}})
        time.sleep(0.1)
        return default_msg(request)

    daemon.handlers["msg"] = msg
    code, out, _ = run("chat", "bob", stdin="hi\n")
    assert code == 0 and "bob: reply\\x1b[1A" in out and "not this chat" not in out
    assert_terminal_safe(out)


def test_chat_json_prints_one_object_per_line(run, daemon):
    """chat --json prints each outcome as one JSON object per line."""
    code, out, _ = run("--json", "chat", "bob", stdin="a\noffline b\n")
    objects = [json.loads(line) for line in out.splitlines()]
    assert code == 3 and [(o["line"], o["text"], o["status"]) for o in objects] == [
        (1, "a", "delivered"), (2, "offline b", "queued")]


P2PCTL = [sys.executable, "-m", "p2pd.cli.main"]


def test_p2pctl_chat_reads_a_pipe_as_a_script(daemon, home):
    """As a process: p2pctl chat bob < lines sends every line, waits for the acknowledgements, exits 0; the
    --name option after the subcommand works too."""
    _, env = home
    data = ("one\n" + PERSIAN + "\nthree\n").encode("utf-8")
    done = subprocess.run(P2PCTL + ["chat", "bob", "--name", "alice"], input=data, capture_output=True,
                          env=dict(os.environ, **env), timeout=60)
    assert done.returncode == 0, done.stderr
    assert [r["text"] for r in daemon.requests if r["cmd"] == "msg"] == ["one", PERSIAN, "three"]
    assert done.stdout.decode("utf-8").splitlines()[1] == "delivered: " + PERSIAN


def test_p2pctl_chat_refuses_a_line_that_is_not_utf8_and_sends_the_rest(daemon, home):
    """A line of stdin that is not UTF-8 is refused on its own (the daemon says why); the others are sent and
    the exit code reports the error."""
    _, env = home

    def strict_msg(request):
        try:
            request["text"].encode("utf-8")
        except UnicodeEncodeError:
            return fail("bad_request", "the message is not valid Unicode text")
        return default_msg(request)

    daemon.handlers["msg"] = strict_msg
    done = subprocess.run(P2PCTL + ["chat", "bob"], input=b"ok\n\xff\xfebad\nlast\n", capture_output=True,
                          env=dict(os.environ, **env), timeout=60)
    assert done.returncode == exits.USAGE
    assert done.stdout.decode().splitlines() == ["delivered: ok", "delivered: last"]
    assert b"line 2 not sent: the message is not valid Unicode text" in done.stderr


def test_p2pctl_process_exit_code_when_no_daemon(home):
    """As a process, with nothing running: exit 69 and the hint on stderr."""
    _, env = home
    done = subprocess.run(P2PCTL + ["peers"], capture_output=True, env=dict(os.environ, **env), timeout=60)
    assert done.returncode == 69 and b"twistd -n p2pd --role=peer" in done.stderr


# --- chat on a terminal -----------------------------------------------------------------------------------------

def read_until(fd, needle, timeout=10):
    data = b""
    deadline = time.monotonic() + timeout
    while needle not in data:
        left = deadline - time.monotonic()
        assert left > 0, "no %r in %r" % (needle, data)
        if select.select([fd], [], [], left)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
    return data


def test_interactive_chat_prints_incoming_above_the_line_being_typed(daemon, home):
    """On a terminal, a message arriving while the user types is printed above the input line (clear line,
    print, redraw the prompt and what was typed); Enter sends the whole line; Ctrl-D leaves with exit 0."""
    _, env = home
    master, slave = pty.openpty()
    proc = subprocess.Popen(P2PCTL + ["chat", "bob"], stdin=slave, stdout=slave, stderr=slave, close_fds=True,
                            env=dict(os.environ, TERM="dumb", **env))
    os.close(slave)
    try:
        read_until(master, b"you> ")
        daemon.watching.wait(10)
        os.write(master, b"hel")
        read_until(master, b"hel")
        daemon.push({"event": "message", "message": {"sender": "bob", "recipient": "alice", "ts": 0,
                                                     "body": "hi " + HOSTILE, "direction": "in"}})
        shown = read_until(master, b"you> hel")
        assert b"\r\x1b[K[" in shown and b"] bob: hi \\x1b[1A\\r\\n\\x85" in shown
        assert "\u202e".encode() not in shown and b"\x07" not in shown
        os.write(master, "lo ".encode() + PERSIAN.encode() + b"\r")
        read_until(master, b"(delivered to bob)")
        assert [r["text"] for r in daemon.requests if r["cmd"] == "msg"] == ["hello " + PERSIAN]
        os.write(master, b"\x04")
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def test_no_command_argument_overwrites_a_global_option():
    """Issue 13, bug 1: `get`'s PATH was stored as `name`, the global --name, so `p2pctl get bob docs/manual.pdf`
    looked for the daemon of a peer called docs/manual.pdf. No command's own argument may share a global's dest."""
    import argparse

    from p2pd.cli.main import build_parser
    parser = build_parser()
    globals_ = {a.dest for a in parser._actions if a.dest not in ("help", "command")}
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, sub in subparsers.choices.items():
        own = {a.dest for a in sub._actions if a.dest != "help" and a.default is not argparse.SUPPRESS}
        assert not own & globals_, "%s: %s" % (name, own & globals_)


def test_get_a_path_without_data_dir_talks_to_the_only_daemon(run, daemon):
    daemon.handlers["get"] = lambda r: ok({"saved": ["/inbox/manual.pdf"], "sent": 10, "seconds": 1.0})
    code, out, err = run("get", "bob", "docs/manual.pdf", "--quiet")
    assert code == 0, err
    assert daemon.requests[-1]["name"] == "docs/manual.pdf" and daemon.requests[-1]["peer"] == "bob"
    assert "got docs/manual.pdf from bob" in out


def test_interactive_chat_has_help_and_sends_a_slash_line_with_two_slashes(daemon, home):
    """Issue 13, bug 8: /help inside chat was sent to the peer as a message. It is a command now; an unknown
    /word says how to send it; //shrug sends "/shrug"."""
    from tests.pty_session import Pty
    _, env = home
    chat = Pty(P2PCTL + ["chat", "bob"], env=dict(os.environ, **env))
    try:
        chat.expect("you> ")
        daemon.watching.wait(10)
        chat.type("/help")
        chat.expect("start it with //")
        chat.type("/shrug")
        chat.expect("//shrug sends it as a message")
        chat.type("//shrug")
        chat.expect("(delivered to bob)")
        assert [r["text"] for r in daemon.requests if r["cmd"] == "msg"] == ["/shrug"]
        chat.type("/quit")
        assert chat.proc.wait(10) == 0
    finally:
        chat.close()


def test_a_hint_the_message_says_already_is_not_said_twice(run, daemon):
    """Issue 13: `... did not answer (X); try again later; try again later`."""
    daemon.handlers["peers"] = lambda r: fail("unavailable", "the registry or the network did not answer (X); "
                                                             "try again later")
    code, _, err = run("peers")
    assert code == exits.TEMPFAIL and err.count("try again later") == 1, err


def test_help_lists_the_exit_codes_once_and_each_command_only_its_own(run):
    """Issue 13: every subcommand's --help repeated the whole table; `twistd p2pd --help` ended with a docstring."""
    code, out, _ = run("--help")
    assert code == 0 and out.count("exit codes:") == 1 and "  66  " in out and "  3   " in out
    _, out, _ = run("send", "--help")
    assert "  66  " in out and "  5   " in out and "  3   " not in out
    _, out, _ = run("status", "--help")
    assert "  4   " not in out and "  66  " not in out and "  69  " in out
    twistd = subprocess.run([os.path.join(os.path.dirname(sys.executable), "twistd"), "p2pd", "--help"],
                            capture_output=True, text=True, timeout=60).stdout
    assert "``" not in twistd and "makeService" not in twistd and "--role=peer --name=alice" in twistd


def test_the_shell_names_its_own_commands_in_hints():
    from p2pd.cli.shell import in_shell
    assert in_shell("you are not a member of G1: p2pctl join G1") == "you are not a member of G1: join G1"
    assert in_shell("p2pctl status lists it") == "p2pctl status lists it"  # not a shell command: as it is


def test_inside_the_checkout_the_dev_up_daemons_are_found(run, home, monkeypatch):
    """Issue 13: with ./dev up running, `p2pctl peers` in the checkout said no daemon was running (they live in
    var/). It looks there too: by name, and when there is just one."""
    top, _ = home
    checkout = os.path.join(top, "co")
    os.makedirs(os.path.join(checkout, "var", "alice"))
    monkeypatch.chdir(checkout)
    daemon = FakeDaemon(os.path.join(checkout, "var", "alice", "control.sock"))
    try:
        code, out, err = run("peers")
        assert code == 0 and "bob" in out, err
        code, out, err = run("--name", "alice", "status")
        assert code == 0, err
    finally:
        daemon.close()
