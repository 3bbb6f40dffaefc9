"""Peer daemons end to end: real ``twistd -n p2pd --role=peer`` processes, a real registry, real sockets.

Every process is a child on free 127.0.0.1 ports (:class:`tests.peer_process.PeerProcess`,
:class:`tests.registry_process.RegistryProcess`, :class:`tests.redis_helper.RedisServerProcess`) and is stopped by
its pid when the test ends. The tests talk to the daemons the way users and scripts do: the control socket (one
JSON request per line, pipelined where it matters), ``p2pctl`` as a subprocess, the registry's HTTP API, and, for
the attacks, a TLS client of our own on a peer's port.

What is checked comes from the issue (chat that never loses, duplicates or reorders a message; the mailbox;
presence across registry crashes and data loss; names owned by keys) and from ``RELIABILITY.md`` rows 16
(impersonation), 18 (line abuse), 21 and 22 (exactly once and in order across SIGKILL and the mailbox).
"""

import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from OpenSSL import SSL

from p2pd.core import signing, wire
from p2pd.peer import identity as identity_mod
from tests.peer_process import PeerProcess
from tests.tls_client import TLSClient, peer_port
from tests.redis_helper import RedisServerProcess
from tests.registry_process import RegistryProcess
from tests.twistd_process import TWISTD, rss_kb

pytestmark = pytest.mark.slow

P2PCTL = os.path.join(os.path.dirname(sys.executable), "p2pctl")
SHORT_LEASE = ["--lease-ttl", "6"]  # heartbeats every 2 s, so presence problems show within seconds


# ---------------------------------------------------------------------------------------------------------------
# helpers: the registry over HTTP


def http_json(url, method="GET", headers=None, timeout=5):
    """(status, decoded JSON body) of one HTTP request; error statuses are returned, not raised."""
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status, json.loads(reply.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def record(registry, name):
    """The registry's public record of *name* (404 -> None)."""
    status, body = http_json(registry.http + "/v1/peers/" + name)
    return body if status == 200 else None


def online(registry):
    """The names ``GET /v1/peers`` lists as online."""
    status, body = http_json(registry.http + "/v1/peers?limit=200")
    assert status == 200, body
    return {p["name"] for p in body["peers"] if p.get("online")}


def mailbox(registry, peer):
    """What waits in *peer*'s registry mailbox, fetched with a request signed by its own key."""
    ident = identity_mod.load_or_create(peer.data_dir, peer.name)
    path = "/v1/mailbox/%s?limit=100" % peer.name
    headers = signing.sign_request(ident.signing, peer.name, "GET", path, b"", time.time())
    status, body = http_json(registry.http + path, headers=headers)
    assert status == 200, body
    return body["messages"]


def wait_until(predicate, timeout, what):
    """Poll *predicate* (exceptions count as "not yet") until it is true; AssertionError after *timeout* s."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception as e:  # a daemon or registry restarting: try again
            last = e
        time.sleep(0.1)
    raise AssertionError("timed out after %ss waiting for %s (last error: %r)" % (timeout, what, last))


# ---------------------------------------------------------------------------------------------------------------
# helpers: the control socket


def incoming(peer, other):
    """The messages *peer* received from *other*, oldest first."""
    return [m for m in peer.ctl("history", conversation=other, limit=10000) if m["direction"] == "in"]


def outgoing(peer, other):
    return [m for m in peer.ctl("history", conversation=other, limit=10000) if m["direction"] == "out"]


def pipeline(peer, requests, timeout=120):
    """Write every request on one control connection at once, then read until each has its reply: {id: reply}."""
    replies = {}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(peer.control_path)
        s.sendall(b"".join(json.dumps(r).encode() + b"\n" for r in requests))
        s.settimeout(0.5)
        buf = b""
        deadline = time.monotonic() + timeout
        while len(replies) < len(requests):
            if time.monotonic() > deadline:
                raise AssertionError("%s: only %d of %d replies within %ss" % (
                    peer.name, len(replies), len(requests), timeout))
            try:
                chunk = s.recv(1 << 16)
            except socket.timeout:
                continue
            if not chunk:
                raise AssertionError("control socket closed after %d replies" % len(replies))
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                reply = json.loads(line)
                if "id" in reply:
                    assert reply["id"] not in replies, "two replies to request %r" % reply["id"]
                    replies[reply["id"]] = reply
    return replies


def p2pctl(peer, *args, timeout=60):
    return subprocess.run([P2PCTL, "--data-dir", peer.data_dir] + list(args), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


# ---------------------------------------------------------------------------------------------------------------
# helpers: a TLS client on a peer's port, as an attacker would write one


def throwaway_identity(tmp_path, dirname, claimed_name):
    """A fresh key and certificate (another key than any registered peer's), in its own 0700 dir."""
    path = tmp_path / dirname
    path.mkdir(mode=0o700)
    return identity_mod.load_or_create(str(path), claimed_name)


# ---------------------------------------------------------------------------------------------------------------
# fixtures: every process is stopped by its pid


@pytest.fixture
def registry(tmp_path):
    reg = RegistryProcess(tmp_path / "registry")
    with reg:
        yield reg


@pytest.fixture
def spawn(tmp_path):
    """spawn(name, registry, data_dir=None, start=True) -> a PeerProcess, stopped by pid at the end."""
    started = []

    def make(name, reg, data_dir=None, start=True, args=()):
        peer = PeerProcess(data_dir or tmp_path / name, name, reg.http, args=args)
        started.append(peer)
        if start:
            peer.start()
        return peer

    yield make
    for peer in reversed(started):
        peer.stop()


@pytest.fixture
def pair(registry, spawn):
    """alice and bob, both registered with this test's registry."""
    return spawn("alice", registry), spawn("bob", registry)


def linked(alice, bob):
    """Get a link up between alice and bob (one message each way) and return the ids of those messages."""
    a = alice.ctl("msg", to=bob.name, text="hello bob")
    b = bob.ctl("msg", to=alice.name, text="hello alice")
    assert a["status"] == b["status"] == "delivered", (a, b)
    return a["id"], b["id"]


# ---------------------------------------------------------------------------------------------------------------
# chat: exactly once and in order


def test_thousand_messages_each_way_at_once_arrive_once_and_in_order(pair):
    """1000 pipelined `msg` requests on each side at the same time: every reply is ok and delivered, and each
    side's history holds exactly the other's 1000 messages, seq 1..1000, bodies in the order they were sent."""
    alice, bob = pair
    n = 1000
    results = {}

    def send(sender, recipient, tag):
        requests = [{"id": i, "cmd": "msg", "to": recipient.name, "text": "%s #%d" % (tag, i), "wait": 60}
                    for i in range(1, n + 1)]
        try:
            results[tag] = pipeline(sender, requests, timeout=40)  # a healthy run takes ~5 s
        except BaseException as e:  # reported by the main thread
            results[tag] = e

    threads = [threading.Thread(target=send, args=(alice, bob, "a->b")),
               threading.Thread(target=send, args=(bob, alice, "b->a"))]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    elapsed = time.monotonic() - started
    failures = [str(r) for r in results.values() if isinstance(r, BaseException)]
    assert not failures, "\n".join(failures)
    for tag in ("a->b", "b->a"):
        replies = results[tag]
        assert sorted(replies) == list(range(1, n + 1))
        bad = [r for r in replies.values() if not (r["ok"] and r["result"]["status"] == "delivered")]
        assert not bad, "%s: %d replies not delivered, e.g. %r" % (tag, len(bad), bad[:3])
        assert len({r["result"]["id"] for r in replies.values()}) == n, "message ids must be distinct"

    for receiver, sender, tag in ((bob, alice, "a->b"), (alice, bob, "b->a")):
        got = incoming(receiver, sender.name)
        assert len(got) == n, "%s: %d messages received, %d expected" % (tag, len(got), n)
        assert len({m["id"] for m in got}) == n, "%s: duplicates in the history" % tag
        assert [m["seq"] for m in got] == list(range(1, n + 1)), "%s: not in seq order" % tag
        assert [m["body"] for m in got] == ["%s #%d" % (tag, i) for i in range(1, n + 1)], \
            "%s: bodies are not in the order they were sent" % tag
    print("2 x %d messages in %.1f s" % (n, elapsed))


def test_offline_peer_gets_its_messages_from_the_mailbox_when_it_returns(registry, pair):
    """bob is stopped; alice's 5 messages go to the registry mailbox (status queued via mailbox); when bob starts
    again they arrive within 15 s, in order, once; the mailbox is then empty, and another restart of bob brings
    no duplicate."""
    alice, bob = pair
    bob.stop()
    statuses = [alice.ctl("msg", to="bob", text="offline #%d" % i, wait=3) for i in range(1, 6)]
    bob.start()
    bodies = ["offline #%d" % i for i in range(1, 6)]
    try:
        wait_until(lambda: len(incoming(bob, "alice")) >= 5, 15, "bob to receive the 5 queued messages")
    except AssertionError as e:
        raise AssertionError("%s\nbob has %r\nalice's replies were %r" % (
            e, [m["body"] for m in incoming(bob, "alice")],
            [(s["status"], s["via"], s["reason"]) for s in statuses])) from None
    got = incoming(bob, "alice")
    assert [m["body"] for m in got] == bodies
    assert [m["seq"] for m in got] == [1, 2, 3, 4, 5]
    wait_until(lambda: mailbox(registry, bob) == [], 10, "bob's mailbox to be emptied after receipt")
    # bob's receipts bring alice's copies from "in the mailbox" to delivered (on a link, or via her mailbox
    # within a poll of 30 s)
    wait_until(lambda: alice.ctl("status")["in_mailbox"] == 0, 40, "alice to get bob's receipts")
    outgoing = [m for m in alice.ctl("history", conversation="bob", limit=50) if m["direction"] == "out"]
    assert [(m["status"], m["via"]) for m in outgoing[-5:]] == [("delivered", "mailbox")] * 5

    bob.stop()
    bob.start()
    time.sleep(2)  # a mailbox fetch at start, and any re-sent message, would land by now
    assert [m["body"] for m in incoming(bob, "alice")] == bodies, "a restart of bob duplicated messages"
    assert [(s["status"], s["via"]) for s in statuses] == [("queued", "mailbox")] * 5, \
        "each message to an offline peer should be deposited in its mailbox at once: %r" % [
            (s["status"], s["via"], s["reason"]) for s in statuses]


def test_sender_killed_right_after_msg_returns_loses_nothing(pair):
    """Row 21: alice is SIGKILLed right after each `msg` reply (wait=0: answered as soon as it is committed);
    after she restarts every message reaches bob exactly once, in order."""
    alice, bob = pair
    linked(alice, bob)
    trials = 10
    sent = []
    for i in range(1, trials + 1):
        reply = alice.ctl("msg", to="bob", text="kill #%d" % i, wait=0)
        assert reply["status"] in ("queued", "delivered"), reply
        sent.append("kill #%d" % i)
        alice.kill()
        alice.start()
    wait_until(lambda: len(incoming(bob, "alice")) >= trials + 1, 20, "bob to receive every message")
    time.sleep(1)
    got = [m["body"] for m in incoming(bob, "alice")]
    assert got == ["hello bob"] + sent, "lost, duplicated or reordered: %r" % got


def test_receiver_killed_mid_stream_loses_nothing(pair):
    """bob is SIGKILLed while 50 pipelined messages from alice are on their way, then started again: all 50
    arrive exactly once and in order (some directly, some through the mailbox)."""
    alice, bob = pair
    linked(alice, bob)
    n = 50
    requests = [{"id": i, "cmd": "msg", "to": "bob", "text": "stream #%d" % i, "wait": 0} for i in range(1, n + 1)]
    killer = threading.Timer(0.05, bob.kill)
    killer.start()
    replies = pipeline(alice, requests, timeout=60)
    killer.join()
    assert all(r["ok"] for r in replies.values()), [r for r in replies.values() if not r["ok"]][:3]
    bob.start()
    expected = ["hello bob"] + ["stream #%d" % i for i in range(1, n + 1)]
    wait_until(lambda: len(incoming(bob, "alice")) >= n + 1, 45, "bob to receive all %d messages" % n)
    time.sleep(1)
    got = incoming(bob, "alice")
    assert [m["body"] for m in got] == expected
    assert [m["seq"] for m in got] == list(range(1, n + 2))


# ---------------------------------------------------------------------------------------------------------------
# presence: registry crashes, data loss, clean stop


def test_registry_sigkill_and_restart_while_peers_run(tmp_path, spawn):
    """The registry is SIGKILLed: linked peers keep chatting over their link; once it is back on the same data
    dir and port, both peers are listed online again by themselves and report the registry online."""
    reg = RegistryProcess(tmp_path / "registry", args=SHORT_LEASE)
    with reg:
        alice, bob = spawn("alice", reg), spawn("bob", reg)
        linked(alice, bob)
        reg.kill()
        wait_until(lambda: alice.ctl("status")["registry"]["state"] != "online", 10,
                   "alice to notice the registry is gone")
        a = alice.ctl("msg", to="bob", text="while the registry is down", wait=5)
        b = bob.ctl("msg", to="alice", text="still here", wait=5)
        assert a["status"] == b["status"] == "delivered", (a, b)
        time.sleep(7)  # the 6 s leases run out while the registry is down
        reg.start()
        reg.wait_healthy()
        wait_until(lambda: online(reg) >= {"alice", "bob"}, 30, "both peers online in GET /v1/peers")
        for peer in (alice, bob):
            wait_until(lambda: peer.ctl("status")["registry"]["state"] == "online", 10,
                       "%s to report the registry online" % peer.name)
    assert incoming(bob, "alice")[-1]["body"] == "while the registry is down"
    assert incoming(alice, "bob")[-1]["body"] == "still here"


def test_peers_register_again_after_the_registry_forgets_everything(tmp_path, spawn):
    """FLUSHALL on the registry's (external) Redis: the peers notice at their next heartbeat and register again,
    with the same keys, within a bounded time; chat keeps working."""
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    with RedisServerProcess(redis_dir) as server:
        reg = RegistryProcess(tmp_path / "registry", redis_url=server.url, args=SHORT_LEASE)
        with reg:
            alice, bob = spawn("alice", reg), spawn("bob", reg)
            keys = {p.name: p.ctl("status")["key"] for p in (alice, bob)}
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
                s.sendall(b"*1\r\n$8\r\nFLUSHALL\r\n")
                assert s.recv(64).startswith(b"+OK")
            assert record(reg, "alice") is None
            wait_until(lambda: online(reg) >= {"alice", "bob"}, 15, "both peers registered again")
            for name, key in keys.items():
                assert record(reg, name)["key"] == key
            assert alice.ctl("msg", to="bob", text="after the flush", wait=5)["status"] == "delivered"


def test_clean_stop_marks_the_peer_offline_at_once(registry, pair):
    """SIGTERM bob: the registry shows him offline right away, not when his 60 s lease runs out."""
    alice, bob = pair
    assert record(registry, "bob")["online"] is True
    bob.stop()
    rec = record(registry, "bob")
    assert rec["online"] is False, rec
    assert "bob" not in online(registry)


# ---------------------------------------------------------------------------------------------------------------
# identity: names are owned, links are authenticated


def test_impostor_daemon_with_another_key_exits_at_once_with_a_clear_message(tmp_path, registry, pair):
    """A second daemon named alice with a fresh data dir (another key): it exits non-zero within seconds,
    saying the name belongs to another key, with no traceback; alice's registry record is untouched."""
    before = record(registry, "alice")
    data_dir = tmp_path / "impostor"
    data_dir.mkdir(mode=0o700)
    command = [TWISTD, "-n", "--pidfile=", "p2pd", "--role=peer", "--name", "alice", "--data-dir", str(data_dir),
               "--registry", registry.http, "--listen", "tcp:0:interface=127.0.0.1", "--udp", "127.0.0.1:0",
               "--advertise", "127.0.0.1"]  # as a user runs it: the log goes to the terminal
    started = time.monotonic()
    proc = subprocess.run(command, cwd=str(data_dir), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=30)
    elapsed = time.monotonic() - started
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert elapsed < 10, "took %.1f s to give up" % elapsed
    assert "the name alice belongs to another key" in output, output
    assert "Traceback" not in output, output
    after = record(registry, "alice")
    for field in ("key", "tcp", "udp", "box", "fingerprint", "online", "registered_at"):
        assert after[field] == before[field], field


def test_direct_connection_with_another_key_for_the_name_is_refused(tmp_path, pair):
    """Row 16a: a TLS client with a fresh key says hello as alice to bob's port: bob answers identity_mismatch
    and closes before accepting anything; a message sent anyway is not stored."""
    alice, bob = pair
    before = incoming(bob, "alice")
    client = TLSClient(peer_port(bob), throwaway_identity(tmp_path, "mallory", "alice"))
    try:
        client.send_frame(wire.hello("alice", "p2pd/0.1.0"))
        frames = client.read(timeout=5)
        client.send_frame({"t": "msg", "id": "a" * 32, "from": "alice", "seq": len(before) + 1, "ts": 1,
                           "body": "from mallory"})
        client.read(timeout=2)
    finally:
        client.close()
    assert client.closed, "bob kept the connection of an impostor open"
    errors = [f for f in frames if f["t"] == "error"]
    assert errors and errors[0]["code"] == "identity_mismatch", frames
    assert all(f["t"] in ("hello", "error") for f in frames), frames
    time.sleep(0.5)
    assert incoming(bob, "alice") == before


def test_direct_connection_with_another_peers_valid_key_is_refused(tmp_path, registry, spawn, pair):
    """Row 16b: carol's real, registered key claiming to be alice is refused with identity_mismatch; nothing is
    stored."""
    alice, bob = pair
    carol = spawn("carol", registry)
    before = incoming(bob, "alice")
    client = TLSClient(peer_port(bob), identity_mod.load_or_create(carol.data_dir, "carol"))
    try:
        client.send_frame(wire.hello("alice", "p2pd/0.1.0"))
        frames = client.read(timeout=5)
    finally:
        client.close()
    assert client.closed
    assert [f["code"] for f in frames if f["t"] == "error"][:1] == ["identity_mismatch"], frames
    assert incoming(bob, "alice") == before


def test_message_before_hello_is_refused(tmp_path, registry, pair):
    """A peer (even alice's own key) that sends a msg frame before hello gets a handshake error and is
    disconnected; the message is not stored."""
    alice, bob = pair
    before = incoming(bob, "alice")
    client = TLSClient(peer_port(bob), identity_mod.load_or_create(alice.data_dir, "alice"))
    try:
        client.send_frame({"t": "msg", "id": "b" * 32, "from": "alice", "seq": 1, "ts": 1, "body": "sneaky"})
        frames = client.read(timeout=5)
    finally:
        client.close()
    assert client.closed
    assert [f["code"] for f in frames if f["t"] == "error"][:1] == ["handshake"], frames
    time.sleep(0.5)
    assert incoming(bob, "alice") == before


def test_client_without_certificate_is_refused(pair):
    """Row 16d: a TLS client that shows no certificate never gets bob's hello."""
    import ssl

    alice, bob = pair
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    got = b""
    with socket.create_connection(("127.0.0.1", peer_port(bob)), timeout=5) as raw:
        try:
            with ctx.wrap_socket(raw) as s:
                s.sendall(wire.encode(wire.hello("alice", "x")) + b"\n")
                while True:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    got += chunk
        except (ssl.SSLError, OSError):
            pass
    assert b'"hello"' not in got, got


# ---------------------------------------------------------------------------------------------------------------
# text, control socket, CLI


def test_unicode_survives_byte_for_byte(pair):
    """Persian, an emoji ZWJ sequence with a skin tone, U+200F and U+202E travel both ways unchanged, and
    `p2pctl --json history` prints them exactly."""
    alice, bob = pair
    text = "سلام دنیا! می\u200cخواهم 👩\u200d👩\u200d👧\u200d👦 👋🏽 \u200f\u202eبرعکس\u202c ok"
    there = alice.ctl("msg", to="bob", text=text)
    back = bob.ctl("msg", to="alice", text=text[::-1])
    assert there["status"] == back["status"] == "delivered"
    assert [m["body"] for m in incoming(bob, "alice")] == [text]
    assert [m["body"] for m in outgoing(alice, "bob")] == [text]
    assert [m["body"] for m in incoming(alice, "bob")] == [text[::-1]]
    out = p2pctl(bob, "--json", "history", "alice")
    assert out.returncode == 0, out.stderr
    printed = [m for m in json.loads(out.stdout) if m["direction"] == "in"]
    assert [m["body"].encode("utf-8") for m in printed] == [text.encode("utf-8")]


def test_control_socket_is_private(pair):
    """The control socket is mode 0600 in a 0700 data dir."""
    alice, _ = pair
    assert stat.S_ISSOCK(os.stat(alice.control_path).st_mode)
    assert stat.S_IMODE(os.stat(alice.control_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(alice.data_dir).st_mode) == 0o700


def test_p2pctl_status_talks_to_the_daemon(pair):
    """`p2pctl --data-dir DIR status` as a subprocess reaches the daemon and exits 0."""
    alice, _ = pair
    out = p2pctl(alice, "status")
    assert out.returncode == 0, out.stderr
    assert "alice" in out.stdout
    out = p2pctl(alice, "--json", "status")
    assert json.loads(out.stdout)["registry"]["state"] == "online"


def test_p2pctl_msg_to_unknown_peer_exits_4(pair):
    """`p2pctl msg` to a name nobody registered exits 4 and says so."""
    alice, _ = pair
    out = p2pctl(alice, "msg", "nobody-here", "hi")
    assert out.returncode == 4, (out.returncode, out.stdout, out.stderr)
    assert "unknown peer" in (out.stdout + out.stderr).lower()
    assert "Traceback" not in out.stderr


def test_p2pctl_msg_to_offline_peer_exits_3_and_says_queued(pair):
    """`p2pctl msg` to a registered peer that is offline exits 3 and says the message is queued."""
    alice, bob = pair
    bob.stop()
    out = p2pctl(alice, "msg", "bob", "are you there?")
    assert out.returncode == 3, (out.returncode, out.stdout, out.stderr)
    assert "queued" in out.stdout + out.stderr


# ---------------------------------------------------------------------------------------------------------------
# line abuse


def test_megabyte_line_is_cut_off_and_others_still_served(tmp_path, pair):
    """Row 18: a TLS client that sends 1 MB without a newline to bob's port is disconnected with bob's memory
    flat; right after, alice's message to bob is delivered within a second."""
    alice, bob = pair
    linked(alice, bob)
    rss_before = rss_kb(bob.pid)
    client = TLSClient(peer_port(bob), throwaway_identity(tmp_path, "abuser", "mallory"))
    try:
        client.send(b"x" * (1 << 20), timeout=15)
        frames = client.read(timeout=5)
    finally:
        client.close()
    assert client.closed, "bob kept reading a line longer than its limit"
    assert all(f.get("t") == "hello" or f.get("code") == "line_too_long" for f in frames), frames
    grown = rss_kb(bob.pid) - rss_before
    assert grown < 10 * 1024, "bob's RSS grew by %d kB" % grown
    started = time.monotonic()
    reply = alice.ctl("msg", to="bob", text="still there?", wait=5)
    assert reply["status"] == "delivered"
    assert time.monotonic() - started < 1.0


def test_line_flood_from_one_peer_does_not_slow_the_others(tmp_path, registry, spawn, pair):
    """Row 18: an authenticated peer floods bob with 10,000 lines/s (pings) for 3 s while alice chats with
    him: alice's messages are delivered with p95 < 200 ms and bob's RSS grows by less than 10 MB."""
    alice, bob = pair
    mallory = spawn("mallory", registry)
    linked(alice, bob)
    rss_before = rss_kb(bob.pid)
    client = TLSClient(peer_port(bob), identity_mod.load_or_create(mallory.data_dir, "mallory"))
    client.send_frame(wire.hello("mallory", "p2pd/0.1.0"))
    frames = client.read(timeout=1)
    assert [f["t"] for f in frames] == ["hello"], frames
    stop = threading.Event()
    sent = [0]

    def flood():
        batch = b"".join(wire.encode({"t": "ping", "n": i}) + b"\n" for i in range(1, 101))
        next_at = time.monotonic()
        while not stop.is_set():
            if not client.send(batch, timeout=5):
                return
            sent[0] += 100
            client.buf = b""
            try:  # read the pongs so that bob is never blocked on us
                while True:
                    client.conn.recv(1 << 16)
            except (SSL.WantReadError, SSL.Error, OSError):
                pass
            next_at += 0.01
            time.sleep(max(0.0, next_at - time.monotonic()))

    flooder = threading.Thread(target=flood)
    flooder.start()
    latencies = []
    try:
        time.sleep(0.3)
        for i in range(20):
            started = time.monotonic()
            reply = alice.ctl("msg", to="bob", text="during the flood #%d" % i, wait=5)
            latencies.append(time.monotonic() - started)
            assert reply["status"] == "delivered", reply
            time.sleep(0.1)
    finally:
        stop.set()
        flooder.join(10)
        client.close()
    latencies.sort()
    p95 = latencies[int(len(latencies) * 0.95) - 1]
    assert sent[0] >= 20000, "the flood only sent %d lines" % sent[0]
    assert p95 < 0.2, "alice's p95 latency during the flood was %.0f ms" % (p95 * 1000)
    grown = rss_kb(bob.pid) - rss_before
    assert grown < 10 * 1024, "bob's RSS grew by %d kB" % grown


def test_a_running_peer_does_not_log_a_line_per_registry_request(tmp_path, spawn):
    """Issue 13: the foreground daemon logged `Starting factory _HTTP11ClientFactory` on every heartbeat."""
    reg = RegistryProcess(tmp_path / "registry", args=SHORT_LEASE)
    with reg:
        alice = spawn("alice", reg)
        wait_until(lambda: alice.ctl("status")["registry"]["state"] == "online", 20, "alice online")
        time.sleep(5)  # two or three heartbeats
        log = open(alice.log_path, errors="replace").read()
        assert "_HTTP11ClientFactory" not in log, log[-2000:]


def test_a_key_that_owns_as_many_names_as_allowed_exits_with_a_clear_message(tmp_path):
    """Issue 12, finding 8: past names-per-key the registry answers 403 too_many_names; the daemon says so and
    exits instead of retrying for ever."""
    reg = RegistryProcess(tmp_path / "registry", registry_limits="names-per-key=1,claims-per-address-per-hour=1000")
    with reg:
        data_dir = tmp_path / "one-key"
        data_dir.mkdir(mode=0o700)
        base = [TWISTD, "-n", "--pidfile=", "p2pd", "--role=peer", "--data-dir", str(data_dir), "--registry",
                reg.http, "--listen", "tcp:0:interface=127.0.0.1", "--udp", "127.0.0.1:0", "--advertise", "127.0.0.1"]
        first = PeerProcess(data_dir, "alice", reg.http)
        first.start()
        first.stop()
        proc = subprocess.run(base + ["--name", "alice2"], cwd=str(data_dir), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=60)
        output = proc.stdout + proc.stderr
        assert proc.returncode != 0 and "this key owns 1 names already" in output, output
        assert "Traceback" not in output
