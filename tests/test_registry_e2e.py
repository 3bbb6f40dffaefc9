"""The registry end to end: a real ``twistd -n p2pd --role=registry`` process spoken to over HTTP and STUN.

Every registry here is a child process on free 127.0.0.1 ports (:class:`tests.registry_process.RegistryProcess`);
external Redis servers are :class:`tests.redis_helper.RedisServerProcess`. Tests that only read or add their own
names share one registry per module; tests that kill, stop or starve something get their own. Each process a
test starts is stopped by its pid.

What is checked comes from ``RELIABILITY.md`` rows 1-15 (registry): name confusables and the claim race, signed
requests (tamper, replay, window), JSON bombs and the body cap, presence leases, rooms, the mailbox, SIGKILL with
nothing lost, the data-dir lock, a Redis outage, two registries on one Redis, STUN, and option errors.
"""

import json
import os
import select
import signal
import socket
import subprocess
import time
from urllib.parse import quote

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, threads
from twisted.internet.task import deferLater

from p2pd.core import jsonbody, signing, stun
from p2pd.peer.registry_client import RegistryClient
from p2pd.registry import schema
from p2pd.registry.http import MAX_BODY as BODY_CAP
from tests.redis_helper import RedisServerProcess
from tests.registry_process import RegistryProcess
from tests.twistd_process import TWISTD, rss_kb

pytestmark = pytest.mark.slow

MB10 = 10 * 1024 * 1024


# ---------------------------------------------------------------------------------------------------------------
# helpers


class Reply:
    """One HTTP answer: status code, decoded JSON body (or None) and the headers."""

    def __init__(self, code, body, headers, raw):
        self.code, self.body, self.headers, self.raw = code, body, headers, raw

    def header(self, name):
        values = self.headers.getRawHeaders(name.encode("ascii"))
        return values[0].decode("latin-1") if values else None

    def __repr__(self):
        return "<Reply %d %r>" % (self.code, self.raw[:300])


class Treq:
    """treq without the global connection pool, so no stale keep-alive connection survives a killed registry."""

    def request(self, method, url, **kwargs):
        return treq.request(method, url, persistent=False, **kwargs)


def sleep(seconds):
    from twisted.internet import reactor

    return deferLater(reactor, seconds, lambda: None)


def now():
    from twisted.internet import reactor

    return reactor.seconds()


def unique(prefix):
    return "%s-%s" % (prefix, os.urandom(3).hex())


async def call(method, url, body=None, *, data=None, headers=None, content_type="application/json", timeout=5):
    """Send one request with treq; *body* is JSON-encoded, *data* is sent as is."""
    if body is not None:
        data = jsonbody.dumps(body)
    sent = {"Accept": ["application/json"]}
    if data is not None and content_type:
        sent["Content-Type"] = [content_type]
    for key, value in (headers or {}).items():
        sent[key] = [value]
    response = await Treq().request(method, url, data=data, headers=sent, timeout=timeout)
    raw = await treq.content(response)
    try:
        decoded = json.loads(raw) if raw else None
    except ValueError:
        decoded = None
    return Reply(response.code, decoded, response.headers, raw)


async def signed_call(base, method, path, identity, name, body=None, *, data=None, when=None, nonce=None):
    """A request signed by *identity* as *name* (over exactly the bytes and path that are sent)."""
    if body is not None:
        data = jsonbody.dumps(body)
    headers = signing.sign_request(identity, name, method, path, data or b"", now() if when is None else when, nonce)
    return await call(method, base + path, data=data, headers=headers)


def claim_body(identity, tcp=(), udp=()):
    return {"key": identity.public_text, "tcp": list(tcp), "udp": list(udp)}


async def claim(base, name, identity=None, tcp=(), udp=()):
    """PUT /v1/peers/<name> signed by *identity* (a fresh one by default); (Reply, identity)."""
    identity = identity or signing.Identity.generate()
    reply = await signed_call(base, "PUT", "/v1/peers/" + quote(name, safe=""), identity, name,
                              claim_body(identity, tcp, udp))
    return reply, identity


async def new_peer(base, prefix, tcp=(), udp=()):
    """A freshly registered peer with a unique name, as a RegistryClient."""
    name = unique(prefix)
    identity = signing.Identity.generate()
    from twisted.internet import reactor

    client = RegistryClient(base, reactor, Treq(), identity=identity, name=name, timeout=10)
    await client.register(tcp=tcp, udp=udp)
    return client


async def online_names(base):
    """Every name GET /v1/peers lists, following the cursor."""
    names, after = [], None
    while True:
        url = base + "/v1/peers?limit=200" + ("&after=" + after if after else "")
        reply = await call("GET", url)
        assert reply.code == 200, reply
        names += [p["name"] for p in reply.body["peers"]]
        after = reply.body["next"]
        if not after:
            return names


def blockon(coro):
    return pytest_twisted.blockon(defer.ensureDeferred(coro))


def alive(pid):
    """True if pid is a live process (not a zombie)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def redis_servers_for(data_dir):
    """Pids of live redis-server processes whose command line names *data_dir*'s config or socket."""
    conf, sock = os.path.join(data_dir, "redis.conf"), os.path.join(data_dir, "redis.sock")
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as f:
                words = f.read().replace(b"\0", b" ").decode(errors="replace").split()
        except OSError:
            continue
        if words and "redis" in os.path.basename(words[0]) and any(
                w in (conf, sock, "unixsocket:" + sock) for w in words[1:]) and alive(int(entry)):
            found.append(int(entry))
    return found


def http_addr(reg):
    return "127.0.0.1", reg.http_port


def raw_request(reg, method, path, data, content_type="application/json", timeout=5):
    """One request over a plain socket (no reactor): (status, decoded JSON body or None, seconds taken).

    The body goes out in pieces and sending stops as soon as the registry answers, so a request it refuses
    before reading the body (413) is seen as the registry sent it, not as a broken pipe."""
    head = "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" % (method, path)
    if content_type:
        head += "Content-Type: %s\r\n" % content_type
    if data is not None:
        head += "Content-Length: %d\r\n" % len(data)
    started = time.monotonic()
    with socket.create_connection(http_addr(reg), timeout=timeout) as s:
        s.sendall(head.encode() + b"\r\n")
        try:
            for i in range(0, len(data or b""), 65536):
                if select.select([s], [], [], 0)[0]:
                    break
                s.sendall(data[i:i + 65536])
        except OSError:
            pass
        answer, _ = read_until_closed(s)
    elapsed = time.monotonic() - started
    status, body = parse_response(answer)
    return status, body, elapsed


def parse_response(answer):
    """(status, decoded JSON body or None) of one raw HTTP/1.1 response, plain or chunked."""
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    head, _, rest = answer.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        body = b""
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            size = int(size, 16)
            if not size:
                break
            body, rest = body + rest[:size], rest[size + 2:]
    else:
        body = rest
    try:
        return int(head.split(b" ", 2)[1]), json.loads(body)
    except ValueError:
        return int(head.split(b" ", 2)[1]), None


def read_until_closed(sock, limit=1 << 20):
    """Everything the server sends until it closes the connection (or resets it after sending)."""
    data = b""
    try:
        while len(data) < limit:
            chunk = sock.recv(65536)
            if not chunk:
                return data, "closed"
            data += chunk
    except ConnectionResetError:
        return data, "reset"
    except socket.timeout:
        return data, "open"
    return data, "open"


def run_twistd(args, cwd, timeout=30):
    """``twistd -n --pidfile= p2pd ARGS``; the finished process (stdout, stderr captured)."""
    proc = subprocess.Popen([TWISTD, "-n", "--pidfile=", "p2pd"] + args, cwd=str(cwd), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, HOME=str(cwd)))
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("twistd %s was still running after %ss" % (" ".join(args), timeout))
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


# ---------------------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """The module's shared registry: embedded Redis, rate limit off, leases long enough to outlast the module."""
    with RegistryProcess(tmp_path_factory.mktemp("shared"), args=["--lease-ttl", "600"]) as reg:
        yield reg


@pytest.fixture(scope="module")
def alice(registry):
    """``alice`` claimed on the shared registry with a fresh key: (claim Reply, Identity)."""
    return blockon(claim(registry.http, "alice", tcp=["192.0.2.7:7000", "127.0.0.1:7000"], udp=["192.0.2.7:7001"]))


# ---------------------------------------------------------------------------------------------------------------
# 1. claim and lookup


@pytest_twisted.ensureDeferred
async def test_first_claim_creates_the_name(alice):
    """The first claim of a free name answers 201 with the record, online."""
    reply, identity = alice
    assert reply.code == 201, reply
    assert reply.body["name"] == "alice" and reply.body["key"] == identity.public_text
    assert reply.body["online"] is True


@pytest_twisted.ensureDeferred
async def test_lookup_shows_reported_and_observed_addresses(registry, alice):
    """GET /v1/peers/alice shows the addresses she reported, the source address seen (127.0.0.1), online."""
    _, identity = alice
    reply = await call("GET", registry.http + "/v1/peers/alice")
    assert reply.code == 200, reply
    assert reply.body["key"] == identity.public_text
    assert reply.body["tcp"] == ["192.0.2.7:7000", "127.0.0.1:7000"]
    assert reply.body["udp"] == ["192.0.2.7:7001"]
    assert reply.body["observed"] == "127.0.0.1"
    assert reply.body["online"] is True and reply.body["lease_expires"] > now() * 1000


@pytest_twisted.ensureDeferred
async def test_lookup_of_an_unknown_name_is_a_json_404(registry):
    """An unknown name answers 404 with a JSON {"error", "message"} body."""
    reply = await call("GET", registry.http + "/v1/peers/" + unique("nobody"))
    assert reply.code == 404, reply
    assert reply.header("Content-Type") == "application/json"
    assert set(reply.body) == {"error", "message"} and reply.body["error"] == "unknown_peer"


@pytest_twisted.ensureDeferred
async def test_online_list_includes_a_registered_peer(registry, alice):
    """GET /v1/peers lists alice once she has registered."""
    assert "alice" in await online_names(registry.http)


# ---------------------------------------------------------------------------------------------------------------
# 2. ownership and look-alike names


@pytest.mark.parametrize("variant", ["alice", "Alice", "\uff41\uff4c\uff49\uff43\uff45"], ids=["same", "upper", "fullwidth"])
@pytest_twisted.ensureDeferred
async def test_another_key_cannot_take_a_claimed_name(registry, alice, variant):
    """A second key claiming alice, Alice or fullwidth ａｌｉｃｅ gets 409 and alice's record is unchanged."""
    before = await call("GET", registry.http + "/v1/peers/alice")
    reply, _ = await claim(registry.http, variant, tcp=["203.0.113.66:6666"])
    assert reply.code == 409, reply
    assert reply.body["error"] == "name_taken"
    after = await call("GET", registry.http + "/v1/peers/alice")
    assert after.body == before.body


@pytest.mark.parametrize("variant", ["\u0430lice", "alice\u200b", "al ice"], ids=["cyrillic-a", "zero-width", "space"])
@pytest_twisted.ensureDeferred
async def test_names_outside_the_alphabet_are_refused(registry, alice, variant):
    """Cyrillic а, a zero-width space or a space do not reduce to [a-z0-9_-]{3,32}: 400 invalid_name."""
    reply, _ = await claim(registry.http, variant)
    assert reply.code == 400, reply
    assert reply.body["error"] == "invalid_name"
    assert (await call("GET", registry.http + "/v1/peers/" + quote(variant, safe=""))).code == 400


@pytest_twisted.ensureDeferred
async def test_concurrent_claims_of_one_name_have_exactly_one_winner(registry):
    """50 concurrent claims of one fresh name with 50 keys: one 201, 49 409, and the winner owns it."""
    name = unique("race")
    replies = await defer.gatherResults([defer.ensureDeferred(claim(registry.http, name)) for _ in range(50)],
                                        consumeErrors=True)
    codes = sorted(r.code for r, _ in replies)
    assert codes == [201] + [409] * 49, codes
    winner = next(identity for r, identity in replies if r.code == 201)
    owner = await call("GET", registry.http + "/v1/peers/" + name)
    assert owner.body["key"] == winner.public_text


# ---------------------------------------------------------------------------------------------------------------
# 3. signatures


@pytest.mark.parametrize("missing", list(signing.SIGNED_HEADERS) + ["all"])
@pytest_twisted.ensureDeferred
async def test_heartbeat_without_signature_headers_is_401(registry, missing):
    """A heartbeat missing any signature header (or all of them) is 401."""
    peer = await new_peer(registry.http, "unsigned")
    path = "/v1/peers/%s/heartbeat" % peer.name
    headers = signing.sign_request(peer.identity, peer.name, "POST", path, b"", now())
    headers = {} if missing == "all" else {k: v for k, v in headers.items() if k != missing}
    reply = await call("POST", registry.http + path, headers=headers)
    assert reply.code == 401, reply
    assert reply.body["error"] == "unauthorized"


def tamper_method(req, other):
    """Signed as a PUT, sent as the POST."""
    req["sign_method"] = "PUT"


def tamper_path(req, other):
    """Sent to another peer's mailbox."""
    req["path"] = "/v1/mailbox/" + other.name


def tamper_body(req, other):
    """Another payload."""
    req["data"] = jsonbody.dumps({"payload": "forged"})


def tamper_timestamp(req, other):
    """Timestamp header one second earlier."""
    req["headers"][signing.H_TIMESTAMP] = str(int(req["headers"][signing.H_TIMESTAMP]) - 1)


def tamper_nonce(req, other):
    """Another (well-formed) nonce."""
    req["headers"][signing.H_NONCE] = signing.new_nonce()


def tamper_name(req, other):
    """Claims to come from another registered peer."""
    req["headers"][signing.H_NAME] = other.name


TAMPERS = [tamper_method, tamper_path, tamper_body, tamper_timestamp, tamper_nonce, tamper_name]


@pytest.mark.parametrize("tamper", TAMPERS, ids=lambda f: f.__name__.split("_", 1)[1])
@pytest_twisted.ensureDeferred
async def test_changing_a_covered_field_breaks_the_signature(registry, tamper):
    """A signed mailbox deposit with its method, path, body, timestamp, nonce or name changed is refused
    (401/403) and stores nothing; the untouched original is then accepted."""
    sender = await new_peer(registry.http, "signer")
    recipient = await new_peer(registry.http, "target")
    other = await new_peer(registry.http, "other")
    req = {"method": "POST", "sign_method": "POST", "path": "/v1/mailbox/" + recipient.name,
           "data": jsonbody.dumps({"payload": "hello"})}
    honest = signing.sign_request(sender.identity, sender.name, "POST", req["path"], req["data"], now())
    signed_for = dict(req)
    req["headers"] = dict(honest)
    tamper(req, other)
    if req["sign_method"] != "POST":
        req["headers"] = signing.sign_request(sender.identity, sender.name, req["sign_method"], req["path"],
                                              req["data"], now())
    reply = await call(req["method"], registry.http + req["path"], data=req["data"], headers=req["headers"])
    assert reply.code in (401, 403), reply
    assert (await recipient.fetch())["messages"] == []
    assert (await other.fetch())["messages"] == []
    original = await call("POST", registry.http + signed_for["path"], data=signed_for["data"], headers=honest)
    assert original.code == 201, original
    assert [m["payload"] for m in (await recipient.fetch())["messages"]] == ["hello"]


async def replay_claim(base, peer):
    path = "/v1/peers/" + peer.name
    return "PUT", path, jsonbody.dumps(claim_body(peer.identity))


async def replay_heartbeat(base, peer):
    return "POST", "/v1/peers/%s/heartbeat" % peer.name, None


async def replay_deposit(base, peer):
    recipient = await new_peer(base, "replayed")
    return "POST", "/v1/mailbox/" + recipient.name, jsonbody.dumps({"payload": "once"})


@pytest.mark.parametrize("make", [replay_claim, replay_heartbeat, replay_deposit],
                         ids=lambda f: f.__name__.split("_", 1)[1])
@pytest_twisted.ensureDeferred
async def test_a_signed_request_replayed_a_second_later_is_401(registry, make):
    """A claim, heartbeat or deposit sent again with the same headers 1 s later is refused as a replay."""
    peer = await new_peer(registry.http, "replay")
    method, path, data = await make(registry.http, peer)
    headers = signing.sign_request(peer.identity, peer.name, method, path, data or b"", now())
    first = await call(method, registry.http + path, data=data, headers=headers)
    assert 200 <= first.code < 300, first
    await sleep(1)
    again = await call(method, registry.http + path, data=data, headers=headers)
    assert again.code == 401, again
    assert "replay" in again.body["message"]


@pytest.mark.parametrize("skew", [-(signing.WINDOW + 5), signing.WINDOW + 5], ids=["past", "future"])
@pytest_twisted.ensureDeferred
async def test_a_timestamp_outside_the_window_is_401(registry, skew):
    """A heartbeat whose signed timestamp is more than 60 s off the registry's clock is 401."""
    peer = await new_peer(registry.http, "skewed")
    path = "/v1/peers/%s/heartbeat" % peer.name
    reply = await signed_call(registry.http, "POST", path, peer.identity, peer.name, when=now() + skew)
    assert reply.code == 401, reply
    assert "window" in reply.body["message"]


@pytest_twisted.ensureDeferred
async def test_a_peer_cannot_heartbeat_for_another(registry, alice):
    """A heartbeat for alice signed (validly) by bob is 403."""
    bob = await new_peer(registry.http, "bob")
    reply = await signed_call(registry.http, "POST", "/v1/peers/alice/heartbeat", bob.identity, bob.name)
    assert reply.code == 403, reply
    assert reply.body["error"] == "forbidden"


# ---------------------------------------------------------------------------------------------------------------
# 4. malformed and oversized bodies

WRITE_ENDPOINTS = [("PUT", "/v1/peers/xavier"), ("POST", "/v1/mailbox/xavier")]

MALFORMED = [
    # (id, body, content type, expected status)
    ("not-json", b"{this is not json", "application/json", 400),
    ("bad-utf8", b'{"key": "\xff\xfe\xfd"}', "application/json", 400),
    ("nan", b'{"key": NaN}', "application/json", 400),
    ("infinity", b'{"key": -Infinity}', "application/json", 400),
    ("duplicate-keys", b'{"key": "a", "key": "b"}', "application/json", 400),
    ("10k-deep-nesting", b'{"key": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", "application/json", 400),
    ("200k-digit-integer", b'{"key": ' + b"7" * 200_000 + b"}", "application/json", 400),
    ("1e6-digit-integer", b'{"key": ' + b"7" * 1_000_000 + b"}", "application/json", 413),  # over the body cap
    ("top-level-array", b"[]", "application/json", 400),
    ("empty", b"", "application/json", 400),
    ("wrong-content-type", b'{"key": "a"}', "text/plain", 415),
    ("no-content-type", b'{"key": "a"}', "", 415),
]


@pytest.mark.parametrize("method,path", WRITE_ENDPOINTS, ids=["claim", "deposit"])
@pytest.mark.parametrize("case", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_body_is_a_quick_4xx(registry, method, path, case):
    """Each malformed body gets its 4xx with a JSON error, within 200 ms (RELIABILITY row 2)."""
    _, data, content_type, expected = case
    status, body, elapsed = raw_request(registry, method, path, data, content_type)
    assert status == expected, body
    assert set(body) >= {"error", "message"}
    assert elapsed < 0.2, "took %.3f s" % elapsed


@pytest.mark.parametrize("method,path", WRITE_ENDPOINTS, ids=["claim", "deposit"])
def test_huge_declared_length_is_refused_before_the_body_is_read(registry, method, path):
    """A 10 MB Content-Length gets 413 before one body byte is sent, the connection is closed, the rest of
    the body cannot be pushed in, and the registry's memory does not grow by the body."""
    rss_before = rss_kb(registry.pid)
    with socket.create_connection(http_addr(registry), timeout=5) as s:
        s.sendall(("%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   "Content-Length: %d\r\n\r\n" % (method, path, MB10)).encode())
        answer, state = read_until_closed(s)
        assert parse_response(answer) == (413, {"error": "too_large", "message": "request body larger than %d bytes"
                                                % BODY_CAP})
        assert state in ("closed", "reset")
        with pytest.raises(OSError):  # EPIPE / ECONNRESET: nobody is reading any more
            for _ in range(MB10 // 65536):
                s.sendall(b"x" * 65536)
    assert rss_kb(registry.pid) - rss_before < 20 * 1024


@pytest.mark.parametrize("method,path", WRITE_ENDPOINTS, ids=["claim", "deposit"])
def test_huge_chunked_body_is_cut_off_at_the_cap(registry, method, path):
    """10 MB chunked without Content-Length gets 413 once the cap is passed and the connection closes long
    before all 10 MB went in; memory does not grow by the body."""
    rss_before = rss_kb(registry.pid)
    sent = 0
    with socket.create_connection(http_addr(registry), timeout=5) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        s.sendall(("%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   "Transfer-Encoding: chunked\r\n\r\n" % (method, path)).encode())
        chunk = b"%x\r\n%s\r\n" % (16384, b"7" * 16384)
        try:
            while sent < MB10:
                if select.select([s], [], [], 0)[0]:
                    break  # the server has answered
                s.sendall(chunk)
                sent += 16384
        except OSError:
            pass
        answer, state = read_until_closed(s)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert state in ("closed", "reset")
    assert sent < BODY_CAP + 512 * 1024, "sent %d bytes before the registry stopped it" % sent
    assert rss_kb(registry.pid) - rss_before < 20 * 1024


def test_registry_survives_every_malformed_body(registry):
    """After the whole battery of malformed and oversized bodies, /v1/health is 200 and the pid is alive;
    no answer along the way was 5xx."""
    for method, path in WRITE_ENDPOINTS:
        for _, data, content_type, expected in MALFORMED:
            status, _, _ = raw_request(registry, method, path, data, content_type)
            assert status < 500
        for header in ("Content-Length: %d" % MB10, "Transfer-Encoding: chunked"):
            with socket.create_connection(http_addr(registry), timeout=5) as s:
                s.sendall(("%s %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n%s\r\n\r\n"
                           % (method, path, header)).encode())
                try:
                    for _ in range(40):
                        s.sendall(b"4000\r\n" + b"[" * 0x4000 + b"\r\n")
                except OSError:
                    pass
                answer, _ = read_until_closed(s)
                assert not answer.startswith(b"HTTP/1.1 5")
    assert alive(registry.pid)
    status, body, _ = raw_request(registry, "GET", "/v1/health", None)
    assert (status, body["status"]) == (200, "ok")


# ---------------------------------------------------------------------------------------------------------------
# 5. presence lease

LEASE_TTL = 5


@pytest.fixture(scope="module")
def lease_registry(tmp_path_factory):
    """A registry whose leases last 5 s."""
    with RegistryProcess(tmp_path_factory.mktemp("lease"), args=["--lease-ttl", str(LEASE_TTL)]) as reg:
        yield reg


@pytest.fixture(scope="module")
def lapsing(lease_registry):
    """Three peers registered together on the 5 s registry and never refreshed: {role: client}, plus the
    registry's time of registration. Each test waits (bounded) until its own peer's lease ran out."""
    async def register():
        started = now()
        peers = {}
        for role in ("listed", "record", "heartbeat"):
            peers[role] = await new_peer(lease_registry.http, "lapse")
        return started, peers

    return blockon(register())


async def wait_until_unlisted(base, name, started, ttl=LEASE_TTL):
    """Poll GET /v1/peers until *name* is gone; the registry time it went (bounded by ttl + 3 s)."""
    while name in await online_names(base):
        assert now() - started < ttl + 3, "%s still listed %.1f s after registering" % (name, now() - started)
        await sleep(0.2)
    return now()


@pytest_twisted.ensureDeferred
async def test_unrefreshed_peer_leaves_the_online_list_after_the_ttl(lease_registry, lapsing):
    """Without heartbeats a peer is listed until its 5 s lease runs out, then no longer."""
    started, peers = lapsing
    name = peers["listed"].name
    if now() - started < LEASE_TTL - 1.5:
        assert name in await online_names(lease_registry.http)
    gone = await wait_until_unlisted(lease_registry.http, name, started)
    assert gone - started >= LEASE_TTL - 0.5


@pytest_twisted.ensureDeferred
async def test_a_lapsed_peer_keeps_its_record_and_its_name(lease_registry, lapsing):
    """After the lease ran out, GET /v1/peers/<name> still returns the record with online=false, and a third
    party still cannot claim the name (409)."""
    started, peers = lapsing
    peer = peers["record"]
    await wait_until_unlisted(lease_registry.http, peer.name, started)
    reply = await call("GET", lease_registry.http + "/v1/peers/" + peer.name)
    assert reply.code == 200, reply
    assert reply.body["online"] is False and reply.body["lease_expires"] is None
    assert reply.body["key"] == peer.identity.public_text
    stolen, _ = await claim(lease_registry.http, peer.name)
    assert stolen.code == 409, stolen


@pytest_twisted.ensureDeferred
async def test_a_heartbeat_brings_a_lapsed_peer_back_online(lease_registry, lapsing):
    """A heartbeat after the lease ran out makes the peer online and listed again."""
    started, peers = lapsing
    peer = peers["heartbeat"]
    await wait_until_unlisted(lease_registry.http, peer.name, started)
    beat = await peer.heartbeat()
    assert beat["online"] is True and beat["ttl"] == LEASE_TTL
    assert (await peer.lookup(peer.name))["online"] is True
    assert peer.name in await online_names(lease_registry.http)


# ---------------------------------------------------------------------------------------------------------------
# 6. rooms


@pytest_twisted.ensureDeferred
async def test_general_holds_every_registered_peer(registry):
    """General exists from the start and every registered peer is a member."""
    peers = [await new_peer(registry.http, "member") for _ in range(3)]
    reply = await call("GET", registry.http + "/v1/rooms/General")
    assert reply.code == 200, reply
    assert reply.body["name"] == "General" and reply.body["id"] == "general"
    assert set(p.name for p in peers) <= set(reply.body["members"])
    assert set(await online_names(registry.http)) <= set(reply.body["members"])  # leases outlast the module
    listed = await call("GET", registry.http + "/v1/rooms?limit=200")
    assert "general" in [r["id"] for r in listed.body["rooms"]]


@pytest_twisted.ensureDeferred
async def test_create_room_then_same_name_in_other_case_conflicts(registry):
    """Creating G1 answers 201 with its creator as member; creating g1 afterwards is 409 room_exists."""
    creator = await new_peer(registry.http, "creator")
    rival = await new_peer(registry.http, "rival")
    created = await signed_call(registry.http, "POST", "/v1/rooms", creator.identity, creator.name, {"name": "G1"})
    assert created.code == 201, created
    assert (created.body["id"], created.body["name"], created.body["members"]) == ("g1", "G1", [creator.name])
    again = await signed_call(registry.http, "POST", "/v1/rooms", rival.identity, rival.name, {"name": "g1"})
    assert again.code == 409, again
    assert again.body["error"] == "room_exists"
    assert (await call("GET", registry.http + "/v1/rooms/g1")).body["members"] == [creator.name]


async def member_call(base, method, room, peer):
    path = "/v1/rooms/%s/members/%s" % (quote(room, safe=""), peer.name)
    return await signed_call(base, method, path, peer.identity, peer.name)


@pytest_twisted.ensureDeferred
async def test_join_and_leave_a_room(registry):
    """A peer joins (200, listed as member) and leaves (200, no longer listed)."""
    creator = await new_peer(registry.http, "host")
    guest = await new_peer(registry.http, "guest")
    room = unique("Room")
    await creator.create_room(room)
    joined = await member_call(registry.http, "PUT", room, guest)
    assert joined.code == 200, joined
    assert sorted(joined.body["members"]) == sorted([creator.name, guest.name])
    left = await member_call(registry.http, "DELETE", room, guest)
    assert left.code == 200, left
    assert left.body["members"] == [creator.name]


@pytest_twisted.ensureDeferred
async def test_joining_twice_is_409_already_member(registry):
    """Joining a room one is already in is 409 already_member."""
    creator = await new_peer(registry.http, "host")
    room = unique("Room")
    await creator.create_room(room)
    reply = await member_call(registry.http, "PUT", room, creator)
    assert reply.code == 409, reply
    assert reply.body["error"] == "already_member"


@pytest_twisted.ensureDeferred
async def test_leaving_a_room_one_is_not_in_is_409_not_member(registry):
    """Leaving a room one is not in is 409 not_member."""
    creator = await new_peer(registry.http, "host")
    stranger = await new_peer(registry.http, "stranger")
    room = unique("Room")
    await creator.create_room(room)
    reply = await member_call(registry.http, "DELETE", room, stranger)
    assert reply.code == 409, reply
    assert reply.body["error"] == "not_member"


@pytest.mark.parametrize("method", ["PUT", "DELETE"], ids=["join", "leave"])
@pytest_twisted.ensureDeferred
async def test_unknown_room_is_404(registry, method):
    """Joining or leaving a room that does not exist is 404 unknown_room."""
    peer = await new_peer(registry.http, "lost")
    reply = await member_call(registry.http, method, unique("Nowhere"), peer)
    assert reply.code == 404, reply
    assert reply.body["error"] == "unknown_room"


@pytest_twisted.ensureDeferred
async def test_nobody_leaves_general(registry):
    """Leaving General is 403, and the peer stays a member."""
    peer = await new_peer(registry.http, "loyal")
    reply = await member_call(registry.http, "DELETE", "General", peer)
    assert reply.code == 403, reply
    assert peer.name in (await call("GET", registry.http + "/v1/rooms/general")).body["members"]


# ---------------------------------------------------------------------------------------------------------------
# 7. mailbox


@pytest_twisted.ensureDeferred
async def test_deposit_is_fetched_by_its_recipient_and_gone_after_ack(registry):
    """carol deposits for bob; bob fetches it (from carol), acks it with DELETE, and it is gone."""
    carol = await new_peer(registry.http, "carol")
    bob = await new_peer(registry.http, "bob")
    deposited = await signed_call(registry.http, "POST", "/v1/mailbox/" + bob.name, carol.identity, carol.name,
                                  {"payload": "see you at 5"})
    assert deposited.code == 201, deposited
    messages = (await bob.fetch())["messages"]
    assert [(m["id"], m["from"], m["payload"]) for m in messages] == [
        (deposited.body["id"], carol.name, "see you at 5")]
    acked = await signed_call(registry.http, "DELETE", "/v1/mailbox/%s/%s" % (bob.name, deposited.body["id"]),
                              bob.identity, bob.name)
    assert acked.code == 200, acked
    assert (await bob.fetch())["messages"] == []
    again = await signed_call(registry.http, "DELETE", "/v1/mailbox/%s/%s" % (bob.name, deposited.body["id"]),
                              bob.identity, bob.name)
    assert again.code == 404, again


@pytest_twisted.ensureDeferred
async def test_only_the_recipient_can_fetch(registry):
    """alice (signing as herself) fetching bob's mailbox is 403; unsigned is 401; bob's message stays."""
    carol = await new_peer(registry.http, "carol")
    bob = await new_peer(registry.http, "bob")
    alice = await new_peer(registry.http, "alice")
    await carol.deposit(bob.name, "for bob only")
    path = "/v1/mailbox/%s?limit=50" % bob.name
    snooped = await signed_call(registry.http, "GET", path, alice.identity, alice.name)
    assert snooped.code == 403, snooped
    assert "for bob only" not in snooped.raw.decode()
    assert (await call("GET", registry.http + path)).code == 401
    assert [m["payload"] for m in (await bob.fetch())["messages"]] == ["for bob only"]


@pytest_twisted.ensureDeferred
async def test_deposit_for_an_unknown_name_is_404(registry):
    """Depositing for a name nobody owns is 404 unknown_peer."""
    carol = await new_peer(registry.http, "carol")
    reply = await signed_call(registry.http, "POST", "/v1/mailbox/" + unique("ghost"), carol.identity, carol.name,
                              {"payload": "hello?"})
    assert reply.code == 404, reply
    assert reply.body["error"] == "unknown_peer"


@pytest_twisted.ensureDeferred
async def test_payload_over_64_kib_is_400(registry):
    """A payload of 64 KiB is accepted; one byte more is 400 and nothing is stored."""
    carol = await new_peer(registry.http, "carol")
    bob = await new_peer(registry.http, "bob")
    path = "/v1/mailbox/" + bob.name
    limit = schema.MAILBOX_MAX_BYTES
    too_big = await signed_call(registry.http, "POST", path, carol.identity, carol.name, {"payload": "x" * (limit + 1)})
    assert too_big.code == 400, too_big
    assert (await bob.fetch())["messages"] == []
    just_fits = await signed_call(registry.http, "POST", path, carol.identity, carol.name, {"payload": "x" * limit})
    assert just_fits.code == 201, just_fits


# ---------------------------------------------------------------------------------------------------------------
# 8. SIGKILL and restart


async def in_batches(factories, size=50):
    results = []
    for i in range(0, len(factories), size):
        results += await defer.gatherResults([defer.ensureDeferred(f()) for f in factories[i:i + size]],
                                             consumeErrors=True)
    return results


@pytest_twisted.ensureDeferred
async def test_sigkill_and_restart_loses_nothing(tmp_path):
    """200 acknowledged claims and 200 acknowledged deposits survive a SIGKILL of the registry; the restarted
    registry stops the orphaned redis-server, so exactly one serves the data dir, and health is 200."""
    reg = RegistryProcess(tmp_path / "data")
    try:
        reg.start()
        reg.wait_healthy()
        inbox = await new_peer(reg.http, "inbox")
        claims = await in_batches([lambda i=i: claim(reg.http, "kept-%03d" % i) for i in range(200)])
        assert [r.code for r, _ in claims] == [201] * 200
        sender = await new_peer(reg.http, "sender")
        deposits = await in_batches([
            lambda i=i: signed_call(reg.http, "POST", "/v1/mailbox/" + inbox.name, sender.identity, sender.name,
                                    {"payload": "message %d" % i}) for i in range(200)])
        assert [r.code for r in deposits] == [201] * 200
        orphan = int(open(os.path.join(reg.data_dir, "redis.pid")).read())
        assert redis_servers_for(reg.data_dir) == [orphan]
        await sleep(1.2)  # appendfsync everysec

        reg.kill()
        assert alive(orphan), "the registry's redis-server should outlive a SIGKILLed registry"
        reg.start()
        reg.wait_healthy()

        for (reply, identity), i in zip(claims, range(200)):
            got = await call("GET", reg.http + "/v1/peers/kept-%03d" % i)
            assert got.code == 200 and got.body["key"] == identity.public_text, got
        fetched = await signed_call(reg.http, "GET", "/v1/mailbox/%s?limit=200" % inbox.name, inbox.identity,
                                    inbox.name)
        assert sorted(m["id"] for m in fetched.body["messages"]) == sorted(r.body["id"] for r in deposits)
        servers = redis_servers_for(reg.data_dir)
        new = int(open(os.path.join(reg.data_dir, "redis.pid")).read())
        assert servers == [new]
        assert orphan == new or not alive(orphan) or orphan not in servers  # gone, or its pid reused
        assert (await call("GET", reg.http + "/v1/health")).code == 200
    finally:
        reg.stop()


@pytest_twisted.ensureDeferred
async def test_restart_reaches_redis_even_when_the_orphan_is_slow_to_exit(tmp_path):
    """After a SIGKILL, the leftover redis-server may take a while to go (a long fsync, a busy host): the
    restarted registry's first Redis connections land on it and time out. Once it is gone and the fresh
    redis-server runs, the registry must still become healthy and serve the data (within 5 s)."""
    reg = RegistryProcess(tmp_path / "data")
    orphan = None
    try:
        reg.start()
        reg.wait_healthy()
        peer = await new_peer(reg.http, "patient")
        orphan = int(open(os.path.join(reg.data_dir, "redis.pid")).read())
        reg.kill()
        os.kill(orphan, signal.SIGSTOP)  # the orphan is wedged for 2 s
        starting = threads.deferToThread(reg.start)  # start() returns once the fresh redis-server is ready
        await sleep(2)
        os.kill(orphan, signal.SIGCONT)  # now it handles the SIGTERM it was sent and exits
        await starting
        back = time.monotonic()
        while (await call("GET", reg.http + "/v1/health")).code != 200:
            assert time.monotonic() - back < 5, "registry still unhealthy 5 s after the orphan went:\n" + "".join(
                line for line in reg.log_tail(60).splitlines(True) if "Scheduling retry" not in line)
            await sleep(0.2)
        reply = await call("GET", reg.http + "/v1/peers/" + peer.name)
        assert reply.code == 200 and reply.body["key"] == peer.identity.public_text, reply
    finally:
        if orphan is not None and alive(orphan):
            os.kill(orphan, signal.SIGCONT)
        reg.stop()


# ---------------------------------------------------------------------------------------------------------------
# 9. one registry per data dir


def test_second_registry_on_the_same_data_dir_refuses(registry, tmp_path):
    """A second registry on a data dir in use exits non-zero saying "in use", without a traceback, and the
    first keeps serving."""
    log = tmp_path / "second.log"
    cmd = RegistryProcess(registry.data_dir).command()
    cmd[cmd.index("--logfile") + 1] = str(log)
    proc = subprocess.run(cmd, cwd=str(tmp_path), stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    said = proc.stderr.decode(errors="replace") + proc.stdout.decode(errors="replace") + log.read_text()
    assert proc.returncode != 0
    assert "in use" in said, said
    assert "Traceback" not in said, said
    status, body, _ = raw_request(registry, "GET", "/v1/health", None)
    assert (status, body["status"]) == (200, "ok")
    assert alive(registry.pid)


# ---------------------------------------------------------------------------------------------------------------
# 10. Redis outage


@pytest.fixture
def external(tmp_path):
    """A RedisServerProcess and a registry using it: (redis, registry); both stopped after the test."""
    (tmp_path / "redis").mkdir()
    with RedisServerProcess(tmp_path / "redis") as redis:
        with RegistryProcess(tmp_path / "registry", redis_url=redis.url) as reg:
            yield redis, reg


async def timed(method, url, **kwargs):
    started = time.monotonic()
    reply = await call(method, url, timeout=10, **kwargs)
    return reply, time.monotonic() - started


@pytest_twisted.ensureDeferred
async def test_health_is_503_within_2_s_while_redis_is_down(external):
    """With Redis stopped, /v1/health answers 503 with a JSON body and Retry-After within 2 s."""
    redis, reg = external
    redis.stop()
    reply, took = await timed("GET", reg.http + "/v1/health")
    assert reply.code == 503, reply
    assert reply.body["status"] == "unavailable" and reply.body["error"] == "store_unavailable"
    assert reply.header("Retry-After") == "1"
    assert took < 2, "took %.2f s" % took


@pytest_twisted.ensureDeferred
async def test_lookups_are_503_not_500_while_redis_is_down(external):
    """With Redis stopped, a lookup and a claim answer 503 (never 500, never a hang) within 2 s each."""
    redis, reg = external
    peer = await new_peer(reg.http, "stored")
    redis.stop()
    for _ in range(3):
        reply, took = await timed("GET", reg.http + "/v1/peers/" + peer.name)
        assert reply.code == 503, reply
        assert reply.body["error"] == "store_unavailable"
        assert reply.header("Retry-After") == "1"
        assert took < 2, "took %.2f s" % took
    started = time.monotonic()
    written, _ = await claim(reg.http, unique("during"))
    assert written.code == 503, written
    assert time.monotonic() - started < 2


@pytest_twisted.ensureDeferred
async def test_registry_recovers_when_redis_returns(external):
    """When Redis comes back the same registry process answers health 200 within 3 s and still has the data
    written before the outage."""
    redis, reg = external
    peer = await new_peer(reg.http, "durable")
    pid = reg.pid
    redis.stop()
    assert (await call("GET", reg.http + "/v1/health")).code == 503
    redis.start()
    back = time.monotonic()
    while (await call("GET", reg.http + "/v1/health")).code != 200:
        assert time.monotonic() - back < 3, "not healthy 3 s after Redis returned"
        await sleep(0.1)
    assert reg.pid == pid and alive(pid)
    reply = await call("GET", reg.http + "/v1/peers/" + peer.name)
    assert reply.code == 200 and reply.body["key"] == peer.identity.public_text
    assert (await peer.heartbeat())["online"] is True


# ---------------------------------------------------------------------------------------------------------------
# 11. scale-out


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two registry processes sharing one RedisServerProcess."""
    base = tmp_path_factory.mktemp("pair")
    (base / "redis").mkdir()
    with RedisServerProcess(base / "redis") as redis:
        with RegistryProcess(base / "one", redis_url=redis.url) as one:
            with RegistryProcess(base / "two", redis_url=redis.url) as two:
                yield one, two


@pytest_twisted.ensureDeferred
async def test_a_peer_registered_through_one_registry_is_visible_through_the_other(pair):
    """A claim made through registry one is looked up, listed and owned through registry two."""
    one, two = pair
    peer = await new_peer(one.http, "shared")
    reply = await call("GET", two.http + "/v1/peers/" + peer.name)
    assert reply.code == 200 and reply.body["key"] == peer.identity.public_text
    assert peer.name in await online_names(two.http)
    stolen, _ = await claim(two.http, peer.name)
    assert stolen.code == 409, stolen


@pytest_twisted.ensureDeferred
async def test_a_room_created_through_one_registry_is_listed_by_the_other(pair):
    """A room created through registry one appears in registry two's room list."""
    one, two = pair
    peer = await new_peer(one.http, "founder")
    room = unique("Shared")
    await peer.create_room(room)
    listed = await call("GET", two.http + "/v1/rooms?limit=200")
    assert room.lower() in [r["id"] for r in listed.body["rooms"]]


@pytest_twisted.ensureDeferred
async def test_a_request_replayed_at_the_other_registry_is_401(pair):
    """Nonces live in the shared Redis: a heartbeat accepted by one registry is refused when replayed at two."""
    one, two = pair
    peer = await new_peer(one.http, "roamer")
    path = "/v1/peers/%s/heartbeat" % peer.name
    headers = signing.sign_request(peer.identity, peer.name, "POST", path, b"", now())
    assert (await call("POST", one.http + path, headers=headers)).code == 200
    replayed = await call("POST", two.http + path, headers=headers)
    assert replayed.code == 401, replayed


# ---------------------------------------------------------------------------------------------------------------
# 12. STUN


def stun_socket():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(2)
    return s


def test_stun_binding_returns_the_source_address(registry):
    """A Binding request gets a 40-byte success naming 127.0.0.1 and the socket's own port."""
    with stun_socket() as s:
        txid = os.urandom(12)
        s.sendto(stun.binding_request(txid), registry.stun)
        data, source = s.recvfrom(2048)
        assert source == registry.stun
        assert len(data) <= 40
        assert stun.parse_binding_success(data, txid) == ("127.0.0.1", s.getsockname()[1])


@pytest.mark.parametrize("garbage", [b"hello stun", os.urandom(20), b"\x00\x01\x00\x00" + os.urandom(16),
                                     b"\x01\x01\x00\x00\x21\x12\xa4\x42" + os.urandom(12)],
                         ids=["text", "random-20", "no-cookie", "a-response"])
def test_stun_garbage_gets_no_reply_and_the_service_still_answers(registry, garbage):
    """A datagram that is not a Binding request gets no reply (the socket times out); a Binding request
    sent right after is still answered."""
    with stun_socket() as s:
        s.settimeout(0.5)
        s.sendto(garbage, registry.stun)
        with pytest.raises(socket.timeout):
            s.recvfrom(2048)
        s.settimeout(2)
        txid = os.urandom(12)
        s.sendto(stun.binding_request(txid), registry.stun)
        assert stun.parse_binding_success(s.recvfrom(2048)[0], txid) == ("127.0.0.1", s.getsockname()[1])


@pytest_twisted.ensureDeferred
async def test_stun_query_client_against_the_registry(registry):
    """The peers' client, p2pd.peer.nat.stun_client, learns 127.0.0.1 and its own UDP port from the registry."""
    from twisted.internet import reactor

    from p2pd.peer.nat.stun_client import StunClient
    from p2pd.peer.net.udp_port import STUN_BYTES, UDPPort

    udp = UDPPort()
    ours = reactor.listenUDP(0, udp, interface="127.0.0.1")
    our_port = ours.getHost().port
    try:
        client = StunClient(reactor, udp.send, udp.family)
        udp.route(STUN_BYTES, client.datagram_received)
        host, port = await client.query(*registry.stun, timeout=2, retries=1)
    finally:
        await ours.stopListening()
    assert (host, port) == ("127.0.0.1", our_port)


# ---------------------------------------------------------------------------------------------------------------
# 13. option errors

BAD_OPTIONS = [
    ["--role=registry", "--http", "nonsense:1"],
    ["--role=registry", "--stun", "99999"],
    ["--role=bogus"],
    ["--role=registry", "--rate-limit", "x"],
]
BAD_IDS = ["http-endpoint", "stun-port", "role", "rate-limit"]
EXPECTED_WORDS = ["--http", "--stun", "--role", "--rate-limit"]


@pytest.mark.parametrize("args,word", list(zip(BAD_OPTIONS, EXPECTED_WORDS)), ids=BAD_IDS)
def test_bad_option_is_a_usage_error_not_a_traceback(tmp_path, args, word):
    """A bad option makes twistd exit non-zero, naming the option, with no traceback."""
    code, out, err = run_twistd(args + ["--data-dir", str(tmp_path / "data")], tmp_path)
    assert code != 0
    assert word in out + err
    assert "Traceback" not in out + err
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("args,word", list(zip(BAD_OPTIONS, EXPECTED_WORDS)), ids=BAD_IDS)
def test_bad_option_message_goes_to_stderr(tmp_path, args, word):
    """The usage error is written to stderr (stdout stays for output a script may parse)."""
    code, out, err = run_twistd(args + ["--data-dir", str(tmp_path / "data")], tmp_path)
    assert word in err, "stderr: %r; stdout ends: %r" % (err, out[-300:])
