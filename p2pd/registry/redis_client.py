"""A small Redis client for the registry: RESP2 over TCP or a unix socket, replies parsed by hiredis.

* **One Deferred per command.** A command is written at once and its Deferred joins a FIFO queue on its
  connection; each reply fires the oldest. Many commands are in flight per connection (pipelining), and the
  writes of one reactor turn leave in one ``send``.
* **A pool of connections** (:class:`RedisPool`), used round-robin, each kept up by its own reconnect loop: the
  first retry 0.1 s after a loss or refusal, doubling up to 1 s, with jitter, and never giving up. A connection
  is offered for use only once it has answered AUTH (with a password), SELECT (for a db other than 0) and PING;
  if any of them fails the connection is dropped and retried like a refused one.
* **Bounded waits, no timer per command.** One check every ``interval`` seconds drops every connection whose
  oldest command has waited ``timeout`` seconds, failing its commands with :class:`RedisTimeout`. With no
  connection up, a command fails at once with :class:`RedisConnectionError` (a :class:`StoreUnavailable`);
  only before the pool's first connection attempt has had an outcome does it wait, at most ``timeout``.
* **Lua scripts** go by ``EVALSHA``; on ``NOSCRIPT`` (a restarted or flushed Redis) the script is sent with
  ``EVAL``, which also loads it again.

Replies come as hiredis builds them: ``bytes`` for bulk and status strings, ``int``, ``None`` for nil, lists
for arrays (nested as Redis nests them). An error reply fails the command's Deferred with :class:`ResponseError`.
"""

import hashlib
from collections import deque
from random import random
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis
from twisted.internet import defer
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import (
    HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint, UNIXClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from p2pd.errors import BadRequest, StoreUnavailable

log = Logger()

DEFAULT_POOLSIZE = 4
DEFAULT_TIMEOUT = 1.5
CHECK_INTERVAL = 0.25
MAX_WAITING = 10_000  # commands held while the first connection is being made
RETRY_FIRST, RETRY_MAX = 0.1, 1.0
_NOT_ENOUGH = object()  # hiredis' "no complete reply yet" (its default, False, is a possible RESP3 reply)


class ResponseError(Exception):
    """An error reply from Redis; the message is Redis' own (``NOSCRIPT No matching script...``)."""


class RedisConnectionError(StoreUnavailable):
    """No usable connection: none is up, the command's connection was lost, or Redis did not answer in time."""


class RedisTimeout(RedisConnectionError):
    """Redis left a command unanswered for the pool's timeout; its connection was dropped."""


def parse_redis_url(url: str) -> dict:
    """``redis://[[user]:password@]host:port/db`` or ``unix:///path/to/redis.sock?db=0`` -> connection arguments:
    ``host`` and ``port``, or ``path``; ``dbid``, ``username`` and ``password`` (None when not given)."""
    parts = urlsplit(url)
    try:
        secret = {"username": unquote(parts.username) if parts.username else None,
                  "password": unquote(parts.password) if parts.password is not None else None}
        if parts.scheme == "redis":
            db = int(parts.path.strip("/") or 0)
            return {"host": parts.hostname or "127.0.0.1", "port": parts.port or 6379, "dbid": db, **secret}
        if parts.scheme == "unix" and parts.path:
            db = int(parse_qs(parts.query).get("db", ["0"])[0])
            return {"path": parts.path, "dbid": db, **secret}
    except ValueError:
        pass
    raise BadRequest("invalid Redis URL %r: use redis://host:port/db or unix:///path/redis.sock" % (url,))


def endpoint_for(reactor, args: dict, timeout: float):
    """The client endpoint for :func:`parse_redis_url`'s result, with a connect timeout."""
    if "path" in args:
        return UNIXClientEndpoint(reactor, args["path"], timeout=timeout)
    host, port = args["host"], args["port"]
    if isIPAddress(host):
        return TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    if isIPv6Address(host):
        return TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
    return HostnameEndpoint(reactor, host, port, timeout=timeout)


class RedisProtocol(Protocol):
    """One connection: commands written as they come, replies matched to them in order."""

    def __init__(self, on_down=None, on_lost=None):
        self.reader = hiredis.Reader(replyError=ResponseError, notEnoughData=_NOT_ENOUGH)
        self.pending = deque()  # the Deferreds of commands in flight, oldest first
        self.replied = 0  # replies received so far; with len(pending), numbers the commands for the timeout check
        self.marks = deque()  # (commands sent, time) at recent checks, see overdue()
        self.on_down = on_down  # called once the connection is unusable (before its commands fail)
        self.on_lost = on_lost  # called once it is closed
        self.lost = False

    def connectionMade(self):
        nodelay = getattr(self.transport, "setTcpNoDelay", None)
        if nodelay is not None:
            nodelay(True)  # a pipelined write must not wait for the ACK of the previous one

    def send(self, packed: bytes) -> defer.Deferred:
        """Write one command (already RESP-encoded); the Deferred fires with its reply."""
        d = defer.Deferred()
        if self.lost:
            d.errback(RedisConnectionError("the Redis connection is closed"))
            return d
        self.pending.append(d)
        self.transport.write(packed)
        return d

    def execute(self, *args) -> defer.Deferred:
        return self.send(hiredis.pack_command(args))

    def dataReceived(self, data):
        reader, pending = self.reader, self.pending
        reader.feed(data)
        while not self.lost:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as e:
                self.fail("Redis sent something that is not RESP (%s)" % (e,))
                return
            if reply is _NOT_ENOUGH:
                return
            if not pending:
                self.fail("Redis sent a reply to no command")
                return
            d = pending.popleft()
            self.replied += 1
            if isinstance(reply, ResponseError):
                d.errback(reply)
            else:
                d.callback(reply)

    def overdue(self, now: float, timeout: float) -> bool:
        """Note this check's time; True if the oldest command in flight was already sent ``timeout`` ago.

        Command number n (counting from 0) was sent before a check that saw more than n commands sent, so the
        oldest one in flight (number ``replied``) is at least as old as the first remembered check that saw
        more than ``replied``. That is exact to one check interval and costs the hot path nothing."""
        marks = self.marks
        if not self.pending:
            marks.clear()
            return False
        marks.append((self.replied + len(self.pending), now))
        while marks[0][0] <= self.replied:
            marks.popleft()
        return now - marks[0][1] >= timeout

    def fail(self, message: str, error=RedisConnectionError, abort=True):
        """Drop the connection: no more commands, and every command in flight fails with ``error(message)``."""
        if self.lost:
            return
        self.lost = True
        if self.on_down is not None:
            self.on_down(self, message)
        pending, self.pending = self.pending, deque()
        for d in pending:
            d.errback(error(message))
        if abort:
            self.transport.abortConnection()

    def connectionLost(self, reason):
        self.fail("lost the connection to Redis (%s)" % (reason.getErrorMessage(),), abort=False)
        if self.on_lost is not None:
            self.on_lost(self)


class _SlotFactory(Factory):
    noisy = False

    def __init__(self, slot):
        self.slot = slot

    def buildProtocol(self, addr):
        return RedisProtocol(self.slot.down, self.slot.lost)


class _Slot:
    """One connection of the pool, reconnected after every loss or failed attempt, until stopped."""

    def __init__(self, pool):
        self.pool = pool
        self.proto = None  # connected (maybe still in its handshake) protocol
        self.attempt = None  # the endpoint's Deferred while connecting
        self.retry = None  # the DelayedCall of the next attempt
        self.failures = 0  # failed attempts in a row
        self.stopped = False
        self.closed = []  # Deferreds of stop(), fired once the connection is gone

    def start(self):
        self.retry = None
        self.attempt = self.pool.endpoint.connect(_SlotFactory(self))
        self.attempt.addCallbacks(self.connected, self.refused)

    def connected(self, proto):
        self.attempt = None
        self.proto = proto
        if self.stopped:
            proto.transport.loseConnection()
            return
        self.pool.handshake(proto).addCallbacks(self.ready, self.rejected, callbackArgs=(proto,),
                                                errbackArgs=(proto,))

    def ready(self, _, proto):
        if proto.lost or self.stopped:
            return
        self.failures = 0
        self.pool.ready(proto)

    def rejected(self, failure, proto):
        if failure.check(defer.FirstError):
            failure = failure.value.subFailure
        if self.stopped:
            return
        self.pool.failed("the connection's setup failed: %s" % (failure.getErrorMessage(),))
        if not proto.lost:
            proto.fail("connection setup failed")

    def refused(self, failure):
        self.attempt = None
        if self.stopped:
            return
        self.pool.failed("cannot connect to Redis: %s" % (failure.getErrorMessage(),))
        self.schedule()

    def down(self, proto, problem):
        self.pool.lost(proto, problem)

    def lost(self, proto):
        if proto is not self.proto:
            return
        self.proto = None
        if self.stopped:
            closed, self.closed = self.closed, []
            for d in closed:
                d.callback(None)
        else:
            self.schedule()

    def schedule(self):
        self.failures += 1
        delay = min(RETRY_MAX, RETRY_FIRST * 2 ** (self.failures - 1)) * (0.9 + 0.2 * random())
        self.retry = self.pool.clock.callLater(delay, self.start)

    def stop(self) -> defer.Deferred:
        self.stopped = True
        if self.retry is not None:
            self.retry.cancel()
            self.retry = None
        if self.attempt is not None:
            self.attempt.cancel()
        if self.proto is None:
            return defer.succeed(None)
        self.closed.append(defer.Deferred())
        self.proto.transport.loseConnection()
        return self.closed[-1]


class RedisPool:
    """``size`` pipelined connections to one Redis, used round-robin. Start with :meth:`start`."""

    def __init__(self, clock, endpoint, *, db=0, password=None, username=None, size=DEFAULT_POOLSIZE,
                 timeout=DEFAULT_TIMEOUT, interval=CHECK_INTERVAL):
        self.clock = clock
        self.endpoint = endpoint
        self.setup = [("SELECT", db)] if db else []
        if password is not None:
            self.setup.insert(0, ("AUTH", username, password) if username else ("AUTH", password))
        self.timeout = timeout
        self.slots = [_Slot(self) for _ in range(size)]
        self.connections = []  # ready for commands
        self.turn = 0
        self.waiting = deque()  # (packed command, Deferred, since): commands sent before any outcome
        self.problem = None  # why no connection is up, once an attempt has failed
        self.shas = {}
        self.checker = LoopingCall(self.check)
        self.checker.clock = clock
        self.interval = interval
        self.running = False

    @classmethod
    def from_url(cls, url, reactor, **kwargs):
        """A pool for ``redis://`` or ``unix://`` *url* (see :func:`parse_redis_url`), not started yet."""
        args = parse_redis_url(url)
        endpoint = endpoint_for(reactor, args, kwargs.get("timeout", DEFAULT_TIMEOUT))
        return cls(reactor, endpoint, db=args["dbid"], password=args["password"], username=args["username"],
                   **kwargs)

    def start(self):
        self.running = True
        self.checker.start(self.interval, now=False)
        for slot in self.slots:
            slot.start()

    def close(self) -> defer.Deferred:
        """Stop reconnecting and close every connection; fires once all are closed."""
        self.running = False
        if self.checker.running:
            self.checker.stop()
        self.fail_waiting("the Redis client is closed")
        self.connections = []
        closing = [slot.stop() for slot in self.slots]
        return defer.gatherResults(closing).addCallback(lambda _: None)

    # commands

    def execute(self, *args) -> defer.Deferred:
        """Send one command (str, bytes, int or float arguments); fires with its reply."""
        connections = self.connections
        if connections:
            self.turn = turn = (self.turn + 1) % len(connections)
            return connections[turn].send(hiredis.pack_command(args))
        return self.no_connection(hiredis.pack_command(args))

    def evalsha(self, script: str, keys, args) -> defer.Deferred:
        """Run a Lua script by its SHA1, sending its text (EVAL) only if Redis does not have it."""
        sha = self.shas.get(script)
        if sha is None:
            sha = self.shas[script] = hashlib.sha1(script.encode()).hexdigest()
        d = self.execute("EVALSHA", sha, len(keys), *keys, *args)
        d.addErrback(self._noscript, script, keys, args)
        return d

    def _noscript(self, failure, script, keys, args):
        if failure.check(ResponseError) and str(failure.value).startswith("NOSCRIPT"):
            return self.execute("EVAL", script, len(keys), *keys, *args)
        return failure

    def no_connection(self, packed):
        if not self.running:
            return defer.fail(RedisConnectionError("the Redis client is not running"))
        if self.problem is not None:
            return defer.fail(RedisConnectionError("Redis is unavailable: %s" % (self.problem,)))
        if len(self.waiting) >= MAX_WAITING:
            return defer.fail(RedisConnectionError("too many commands waiting for a Redis connection"))
        d = defer.Deferred()
        self.waiting.append((packed, d, self.clock.seconds()))
        return d

    def fail_waiting(self, message):
        waiting, self.waiting = self.waiting, deque()
        for _, d, _ in waiting:
            d.errback(RedisConnectionError(message))

    # connections

    def handshake(self, proto) -> defer.Deferred:
        sent = [proto.execute(*command) for command in self.setup]
        sent.append(proto.execute("PING"))
        return defer.gatherResults(sent, consumeErrors=True)

    def ready(self, proto):
        self.connections.append(proto)
        if self.problem is not None:
            log.info("connected to Redis again")
        self.problem = None
        waiting, self.waiting = self.waiting, deque()
        for packed, d, _ in waiting:
            proto.send(packed).chainDeferred(d)

    def failed(self, problem):
        if self.problem is None and self.running:
            log.warn("{problem}", problem=problem)
        self.problem = problem
        if not self.connections:
            self.fail_waiting("Redis is unavailable: %s" % (problem,))

    def lost(self, proto, problem):
        if proto in self.connections:
            self.connections.remove(proto)
            if not self.connections:
                self.failed(problem)

    def check(self):
        """The periodic check: drop connections with an overdue command, fail overdue waiting commands."""
        try:
            self._check()
        except Exception:  # the LoopingCall would stop for good, and with it every timeout
            log.failure("the Redis client's periodic check failed")

    def _check(self):
        now, timeout = self.clock.seconds(), self.timeout
        for slot in self.slots:
            proto = slot.proto
            if proto is not None and not proto.lost and proto.overdue(now, timeout):
                log.warn("Redis left a command unanswered for {timeout} s: dropping its connection", timeout=timeout)
                proto.fail("Redis did not answer within %g s" % (timeout,), RedisTimeout)
        waiting = self.waiting
        while waiting and now - waiting[0][2] >= timeout:
            waiting.popleft()[1].errback(RedisTimeout("no connection to Redis within %g s" % (timeout,)))
