"""The registry's Redis client: a pipelined RESP2 protocol, a self-healing pool, one periodic timeout check.

Units run on fakes (a ``StringTransport`` per connection, a ``task.Clock``); the last section runs the same
client against real redis-servers, over TCP and a unix socket, including a restart.
"""

import os
import shutil
import socket
import subprocess
import tempfile
import time

import hiredis
import pytest
import pytest_twisted
from twisted.internet import defer, error, task
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from p2pd.errors import StoreUnavailable
from p2pd.registry.embedded_redis import find_redis_server
from p2pd.registry.redis_client import (
    RedisConnectionError, RedisPool, RedisProtocol, RedisTimeout, ResponseError, parse_redis_url,
)

SCRIPT = "return {KEYS[1], ARGV[1]}"

# ---------------------------------------------------------------------------------------------------------------
# fakes


def commands(proto):
    """The commands written on *proto*'s transport since the last call, as lists of bytes."""
    reader = hiredis.Reader()
    reader.feed(proto.transport.value())
    proto.transport.clear()
    out = []
    while (command := reader.gets()) is not False:
        out.append(command)
    return out


def connected():
    proto = RedisProtocol()
    proto.makeConnection(StringTransport())
    return proto


def outcome(d):
    """What *d* fired with: its result, or its Failure (then handled); ``"pending"`` while it has not fired."""
    if not d.called:
        return "pending"
    result = d.result
    if isinstance(result, Failure):
        d.addErrback(lambda _: None)
    return result


class FakeRedis:
    """A client endpoint: each connection is a RedisProtocol on a StringTransport that the test answers."""

    def __init__(self):
        self.connections = []
        self.refusing = False
        self.attempts = 0

    def connect(self, factory):
        self.attempts += 1
        if self.refusing:
            return defer.fail(error.ConnectionRefusedError())
        proto = factory.buildProtocol(None)
        proto.makeConnection(StringTransport())
        self.connections.append(proto)
        return defer.succeed(proto)

    @property
    def last(self):
        return self.connections[-1]


def run(clock, seconds, step=0.01):
    """Let *seconds* pass on *clock* in small steps, as a running reactor would."""
    clock.pump([step] * round(seconds / step))


def lose(proto):
    proto.connectionLost(Failure(error.ConnectionDone("closed by the test")))


def started_pool(**kwargs):
    """A one-connection pool on a FakeRedis whose connection has answered its PING: (pool, redis, clock)."""
    clock, redis = task.Clock(), FakeRedis()
    pool = RedisPool(clock, redis, size=kwargs.pop("size", 1), **kwargs)
    pool.start()
    for proto in redis.connections:
        assert commands(proto) == [[b"PING"]]
        proto.dataReceived(b"+PONG\r\n")
    return pool, redis, clock


# ---------------------------------------------------------------------------------------------------------------
# the protocol


def test_commands_are_written_at_once_in_resp():
    """Each command is written as a RESP array of bulk strings as soon as it is sent; str, bytes and int mix."""
    proto = connected()
    proto.execute("SET", b"k\r\n", 42)
    assert proto.transport.value() == b"*3\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$2\r\n42\r\n"


def test_pipelined_replies_fire_their_commands_in_order():
    """Many commands are in flight on one connection; replies, however they are cut, fire them in order."""
    proto = connected()
    sent = [proto.execute("GET", "k%d" % i) for i in range(3)]
    assert len(commands(proto)) == 3 and all(outcome(d) == "pending" for d in sent)
    for byte in b"$1\r\na\r\n$-1\r\n$2\r\nbc\r\n":
        proto.dataReceived(bytes([byte]))
    assert [outcome(d) for d in sent] == [b"a", None, b"bc"]


@pytest.mark.parametrize("wire, reply", [
    (b"+OK\r\n", b"OK"),
    (b":-7\r\n", -7),
    (b"$-1\r\n", None),
    (b"*-1\r\n", None),
    (b"$0\r\n\r\n", b""),
    (b"*0\r\n", []),
    (b"*3\r\n:1\r\n$-1\r\n$3\r\nabc\r\n", [1, None, b"abc"]),
    (b"*2\r\n*2\r\n$1\r\na\r\n*1\r\n:2\r\n$1\r\nb\r\n", [[b"a", [2]], b"b"]),
])
def test_reply_types(wire, reply):
    """Status and bulk strings are bytes, integers int, nil None, arrays lists (nested as Redis nests them)."""
    proto = connected()
    d = proto.execute("X")
    proto.dataReceived(wire)
    assert outcome(d) == reply


def test_error_reply_fails_only_its_command():
    """An error reply fails its command with ResponseError carrying Redis' message; the next is unaffected."""
    proto = connected()
    bad, good = proto.execute("NOPE"), proto.execute("PING")
    proto.dataReceived(b"-ERR unknown command 'NOPE'\r\n+PONG\r\n")
    failure = outcome(bad)
    assert failure.check(ResponseError) and str(failure.value) == "ERR unknown command 'NOPE'"
    assert outcome(good) == b"PONG"
    assert not proto.transport.disconnecting


def test_connection_loss_fails_every_command_in_flight():
    """When the connection is lost, every command in flight fails with a connection error (StoreUnavailable)."""
    proto = connected()
    sent = [proto.execute("GET", "k"), proto.execute("GET", "j")]
    lose(proto)
    for d in sent:
        assert outcome(d).check(RedisConnectionError, StoreUnavailable)
    late = proto.execute("GET", "k")
    assert outcome(late).check(RedisConnectionError)


def test_garbage_from_the_server_drops_the_connection():
    """Bytes that are not RESP fail the commands in flight and abort the connection."""
    proto = connected()
    d = proto.execute("GET", "k")
    proto.dataReceived(b"?what\r\n")
    assert outcome(d).check(RedisConnectionError)
    assert proto.transport.disconnecting


def test_a_reply_to_no_command_drops_the_connection():
    """A reply that no command waits for means the stream is out of step: the connection is aborted."""
    proto = connected()
    proto.dataReceived(b"+OK\r\n")
    assert proto.transport.disconnecting


# ---------------------------------------------------------------------------------------------------------------
# the pool: setup on connect, reconnecting, timeouts


def test_auth_and_select_are_answered_before_the_connection_is_used():
    """On connect the pool sends AUTH and SELECT (and PING); commands wait until all three are answered."""
    clock, redis = task.Clock(), FakeRedis()
    pool = RedisPool(clock, redis, size=1, db=3, password="s3cret")
    pool.start()
    proto = redis.last
    assert commands(proto) == [[b"AUTH", b"s3cret"], [b"SELECT", b"3"], [b"PING"]]
    d = pool.execute("GET", "k")
    assert commands(proto) == []
    proto.dataReceived(b"+OK\r\n+OK\r\n+PONG\r\n")
    assert commands(proto) == [[b"GET", b"k"]]
    proto.dataReceived(b"$1\r\nv\r\n")
    assert outcome(d) == b"v"


def test_auth_with_a_username():
    """``redis://user:pass@host/`` authenticates with Redis 6 ACL's two-argument AUTH."""
    clock, redis = task.Clock(), FakeRedis()
    pool = RedisPool(clock, redis, size=1, username="reg", password="pw")
    pool.start()
    assert commands(redis.last) == [[b"AUTH", b"reg", b"pw"], [b"PING"]]


def test_failed_auth_drops_the_connection_and_retries_forever():
    """A refused AUTH drops the connection and fails waiting commands; the pool retries with backoff (≤ ~1 s)
    and never gives up, so fixing the password on the server heals it."""
    clock, redis = task.Clock(), FakeRedis()
    pool = RedisPool(clock, redis, size=1, password="wrong")
    pool.start()
    waiting = pool.execute("GET", "k")
    for attempt in range(20):
        proto = redis.last
        commands(proto)
        proto.dataReceived(b"-WRONGPASS invalid username-password pair\r\n-NOAUTH Authentication required.\r\n")
        assert proto.transport.disconnecting
        lose(proto)
        assert outcome(pool.execute("GET", "k")).check(StoreUnavailable)
        clock.advance(1.2)
        assert len(redis.connections) == attempt + 2
    assert outcome(waiting).check(StoreUnavailable)
    redis.last.dataReceived(b"+OK\r\n+PONG\r\n")
    d = pool.execute("GET", "k")
    redis.last.dataReceived(b"$1\r\nv\r\n")
    assert outcome(d) == b"v"


def test_reconnects_quickly_after_a_loss():
    """After a lost connection the first retry comes within about 0.1 s."""
    pool, redis, clock = started_pool()
    lose(redis.last)
    clock.advance(0.09)
    assert len(redis.connections) == 1
    clock.advance(0.03)
    assert len(redis.connections) == 2


def test_retries_back_off_to_about_a_second():
    """While Redis refuses, attempts come 0.1, 0.2, 0.4, 0.8 s apart, then about every second."""
    clock, redis = task.Clock(), FakeRedis()
    redis.refusing = True
    pool = RedisPool(clock, redis, size=1)
    pool.start()
    times = []
    for _ in range(80):
        before = redis.attempts
        clock.advance(0.05)
        if redis.attempts > before:
            times.append(clock.seconds())
    gaps = [b - a for a, b in zip([0.0] + times, times)]
    for gap, nominal in zip(gaps, [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]):
        assert nominal * 0.9 - 0.05 <= gap <= nominal * 1.1 + 0.05, gaps


def test_no_connection_fails_at_once():
    """With Redis refusing connections a command fails at once with StoreUnavailable: it never waits."""
    clock, redis = task.Clock(), FakeRedis()
    redis.refusing = True
    pool = RedisPool(clock, redis, size=2)
    pool.start()
    failure = outcome(pool.execute("PING"))
    assert failure.check(StoreUnavailable) and "Connection was refused" in failure.getErrorMessage()


def test_commands_before_the_first_connection_wait_at_most_the_timeout():
    """Commands sent while the first connection is being made go out as soon as it is up, or fail after the
    timeout if it never comes."""
    clock = task.Clock()

    class Silent(FakeRedis):
        def connect(self, factory):
            self.attempts += 1
            return defer.Deferred()  # the connect never completes

    pool = RedisPool(clock, Silent(), size=2, timeout=1.5)
    pool.start()
    d = pool.execute("PING")
    run(clock, 1.49)
    assert outcome(d) == "pending"
    run(clock, 0.26)
    assert outcome(d).check(RedisTimeout, StoreUnavailable)

    clock, redis = task.Clock(), FakeRedis()
    pool = RedisPool(clock, redis, size=1)
    pool.start()
    d = pool.execute("GET", "k")
    redis.last.dataReceived(b"+PONG\r\n")
    assert commands(redis.last)[-1] == [b"GET", b"k"]


def test_timeout_check_fails_the_commands_of_a_stuck_connection():
    """The periodic check fails every command of a connection whose oldest command waited ``timeout`` (1.5 s),
    to within one check interval (0.25 s), and drops that connection; no timer is armed per command."""
    pool, redis, clock = started_pool(timeout=1.5)
    proto = redis.last
    first = pool.execute("GET", "a")
    run(clock, 1.0)
    second = pool.execute("GET", "b")
    assert len(clock.getDelayedCalls()) == 1  # only the check's own call
    run(clock, 0.49)
    assert outcome(first) == "pending"
    run(clock, 0.26)
    for d in (first, second):
        assert outcome(d).check(RedisTimeout, StoreUnavailable)
    assert proto.transport.disconnecting
    lose(proto)
    run(clock, 0.2)
    assert len(redis.connections) == 2


def test_a_busy_connection_that_answers_is_not_timed_out():
    """Commands answered in time never trip the check, however long the connection stays busy."""
    pool, redis, clock = started_pool(timeout=1.5)
    proto = redis.last
    pool.execute("GET", "k")
    for _ in range(40):  # 10 s with one command always in flight, each answered within 0.25 s
        d = pool.execute("GET", "k")
        clock.advance(0.25)
        proto.dataReceived(b"$1\r\nv\r\n")
        assert outcome(d) == "pending" or outcome(d) == b"v"
    assert not proto.transport.disconnecting


def test_commands_are_spread_over_the_connections():
    """Commands go round-robin over the connections that are up."""
    pool, redis, clock = started_pool(size=3)
    for _ in range(6):
        pool.execute("PING")
    assert [len(commands(p)) for p in redis.connections] == [2, 2, 2]


def test_losing_one_connection_fails_only_its_commands():
    """A lost connection fails its own commands at once; the other connections keep serving, new commands
    included, while the lost one is reconnected."""
    pool, redis, clock = started_pool(size=2)
    one, two = redis.connections
    sent = [pool.execute("GET", "k%d" % i) for i in range(4)]  # round-robin: two, one, two, one
    assert (len(commands(one)), len(commands(two))) == (2, 2)
    lose(two)
    assert [outcome(d) == "pending" for d in sent] == [False, True, False, True]
    later = [pool.execute("PING") for _ in range(2)]
    assert len(commands(one)) == 2
    one.dataReceived(b"$1\r\na\r\n$1\r\nb\r\n+PONG\r\n+PONG\r\n")
    assert [outcome(d) for d in sent[1::2] + later] == [b"a", b"b", b"PONG", b"PONG"]


def test_a_broken_connection_leaves_the_rotation_at_once():
    """After garbage from Redis the connection takes no new command, even before it is fully closed."""
    pool, redis, clock = started_pool(size=2)
    one, two = redis.connections
    pool.execute("GET", "k")  # goes to the second connection: round-robin starts after the first
    commands(two)
    two.dataReceived(b"!!\r\n")
    for _ in range(3):
        pool.execute("PING")
    assert len(commands(one)) == 3 and commands(two) == []


def test_evalsha_falls_back_to_eval_on_noscript():
    """A script goes by EVALSHA; if Redis does not know it (NOSCRIPT), the script text goes by EVAL."""
    pool, redis, clock = started_pool()
    proto = redis.last
    d = pool.evalsha(SCRIPT, ["k"], [7])
    (sent,) = commands(proto)
    assert sent[0] == b"EVALSHA" and sent[2:] == [b"1", b"k", b"7"] and len(sent[1]) == 40
    proto.dataReceived(b"-NOSCRIPT No matching script. Please use EVAL.\r\n")
    assert commands(proto) == [[b"EVAL", SCRIPT.encode(), b"1", b"k", b"7"]]
    proto.dataReceived(b"*2\r\n$1\r\nk\r\n$1\r\n7\r\n")
    assert outcome(d) == [b"k", b"7"]


def test_other_script_errors_are_not_retried():
    """A script that fails for another reason fails with that ResponseError; nothing is resent."""
    pool, redis, clock = started_pool()
    d = pool.evalsha(SCRIPT, [], [])
    commands(redis.last)
    redis.last.dataReceived(b"-ERR Error running script\r\n")
    assert outcome(d).check(ResponseError) and commands(redis.last) == []


def test_close_fires_once_every_connection_is_closed():
    """close() stops reconnecting and fires when all connections are gone; later commands fail at once."""
    pool, redis, clock = started_pool(size=2)
    closed = pool.close()
    assert outcome(closed) == "pending" and all(p.transport.disconnecting for p in redis.connections)
    for proto in redis.connections:
        lose(proto)
    assert outcome(closed) is None
    clock.advance(5)
    assert len(redis.connections) == 2 and not clock.getDelayedCalls()
    assert outcome(pool.execute("PING")).check(StoreUnavailable)


@pytest.mark.parametrize("url, expected", [
    ("redis://127.0.0.1:6390/2", {"host": "127.0.0.1", "port": 6390, "dbid": 2, "username": None,
                                  "password": None}),
    ("redis://:p%40ss@redis.example", {"host": "redis.example", "port": 6379, "dbid": 0, "username": None,
                                       "password": "p@ss"}),
    ("unix:///run/redis.sock?db=4", {"path": "/run/redis.sock", "dbid": 4, "username": None, "password": None}),
])
def test_parse_redis_url(url, expected):
    """Redis URLs name a TCP address or a unix socket, a db and optionally credentials."""
    assert parse_redis_url(url) == expected


# ---------------------------------------------------------------------------------------------------------------
# against a real redis-server


@pytest.fixture
def redis_server(tmp_path):
    from tests.redis_helper import RedisServerProcess

    with RedisServerProcess(tmp_path) as server:
        yield server


def real_pool(url, **kwargs):
    from twisted.internet import reactor

    pool = RedisPool.from_url(url, reactor, **kwargs)
    pool.start()
    return pool


def sleep(seconds):
    from twisted.internet import reactor

    return task.deferLater(reactor, seconds, lambda: None)


async def until_up(pool, within=2.0):
    """PING until it answers; return how long that took."""
    started = time.monotonic()
    while True:
        try:
            await pool.execute("PING")
            return time.monotonic() - started
        except StoreUnavailable:
            assert time.monotonic() - started < within, "Redis not usable %.1f s after it returned" % within
            await sleep(0.02)


@pytest_twisted.ensureDeferred
async def test_real_server_round_trips(redis_server):
    """Against redis-server: pipelined commands, nested replies from a script, an error reply."""
    pool = real_pool(redis_server.url)
    try:
        sets = [pool.execute("SET", "k%d" % i, i) for i in range(100)]
        gets = [pool.execute("GET", "k%d" % i) for i in range(100)]
        assert await defer.gatherResults(sets) == [b"OK"] * 100
        assert await defer.gatherResults(gets) == [b"%d" % i for i in range(100)]
        assert await pool.evalsha("return {1, {KEYS[1], false}, ARGV[1]}", ["a"], ["b"]) == [1, [b"a", None], b"b"]
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await pool.execute("HGET", "k1", "f")
    finally:
        await pool.close()


@pytest_twisted.ensureDeferred
async def test_real_server_noscript_fallback(redis_server):
    """After SCRIPT FLUSH (as after a Redis restart) evalsha still runs the script, and loads it again."""
    pool = real_pool(redis_server.url, size=1)
    try:
        assert await pool.evalsha(SCRIPT, ["k"], ["v"]) == [b"k", b"v"]
        await pool.execute("SCRIPT", "FLUSH")
        assert await pool.evalsha(SCRIPT, ["k"], ["w"]) == [b"k", b"w"]
        assert await pool.execute("SCRIPT", "EXISTS", pool.shas[SCRIPT]) == [1]
    finally:
        await pool.close()


@pytest_twisted.ensureDeferred
async def test_real_server_auth_and_select(redis_server):
    """With a password and a db in the URL, every connection authenticates and selects the db; with a wrong
    password nothing is usable, until the server accepts it: the pool never gives up."""
    admin = real_pool(redis_server.url, size=1)
    await admin.execute("CONFIG", "SET", "requirepass", "s3cret")
    wrong = real_pool("redis://:nope@127.0.0.1:%d/5" % redis_server.port, size=2)
    right = real_pool("redis://:s3cret@127.0.0.1:%d/5" % redis_server.port, size=2)
    try:
        await until_up(right)
        await right.execute("SET", "where", "db5")
        await admin.execute("AUTH", "s3cret")
        await admin.execute("SELECT", 5)
        assert await admin.execute("GET", "where") == b"db5"
        with pytest.raises(StoreUnavailable):
            await wrong.execute("PING")
        await admin.execute("CONFIG", "SET", "requirepass", "nope")
        await until_up(wrong)
        assert await wrong.execute("GET", "where") == b"db5"
    finally:
        await defer.gatherResults([admin.close(), wrong.close(), right.close()])


@pytest_twisted.ensureDeferred
async def test_real_server_restart(redis_server):
    """Redis stopped: commands fail at once with StoreUnavailable. Redis back: commands work within 2 s."""
    pool = real_pool(redis_server.url)
    try:
        await pool.execute("SET", "durable", "yes")
        redis_server.stop()
        await sleep(0.05)  # the reactor sees the connections close
        for _ in range(5):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await pool.execute("GET", "durable")
            assert time.monotonic() - started < 0.1
            await sleep(0.2)
        redis_server.start()
        await until_up(pool, within=2.0)
        assert await pool.execute("GET", "durable") == b"yes"
    finally:
        await pool.close()


@pytest.fixture
def unix_redis():
    """A redis-server on a unix socket only; yields the socket's path."""
    directory = tempfile.mkdtemp(prefix="p2pd-redis-")  # short: sun_path holds 107 bytes
    path = os.path.join(directory, "redis.sock")
    conf = os.path.join(directory, "redis.conf")
    with open(conf, "w") as f:
        f.write('port 0\nunixsocket "%s"\nunixsocketperm 700\ndir "%s"\nsave ""\nappendonly no\n' % (path, directory))
    process = subprocess.Popen([find_redis_server(), conf], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(path)
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline and process.poll() is None, "redis-server did not start"
            time.sleep(0.02)
        yield path
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


@pytest_twisted.ensureDeferred
async def test_real_server_over_a_unix_socket(unix_redis):
    """``unix:///path?db=N`` connects over the socket and selects db N."""
    pool = real_pool("unix://%s?db=2" % unix_redis)
    try:
        await pool.execute("SET", "k", "v")
        assert await pool.execute("GET", "k") == b"v"
        info = (await pool.execute("CLIENT", "INFO")).decode()
        assert " db=2 " in info
    finally:
        await pool.close()
