"""A real redis-server on 127.0.0.1 for tests, run with plain ``subprocess`` (no reactor needed).

    with RedisServerProcess(tmp_path) as server:   # started on a free port, answering PING
        server.url                                 # "redis://127.0.0.1:PORT/0"
        server.kill(); server.start()              # SIGKILL it, then restart it on the same port and dir

Persistence is AOF with ``appendfsync everysec`` in ``directory``, so data survives ``stop()``/``start()`` and
``kill()`` alike (redis writes each command to the AOF before it replies). Output goes to ``directory/redis.log``. On Linux the server
gets SIGTERM if the test process dies, so a killed test run leaves no redis-server behind.
"""

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from p2pd.registry.embedded_redis import find_redis_server

_PORT_ATTEMPTS = 5


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, close)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ping(port: int, timeout: float = 0.5) -> bool:
    """True if a redis-server on 127.0.0.1:port answers PING with +PONG."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _serves(port: int, pid: int) -> bool:
    """True if the redis-server answering on 127.0.0.1:port is process ``pid`` (not some other server)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")
            reply = b""
            while b"process_id:" not in reply or not reply.endswith(b"\r\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return False
    return f"process_id:{pid}\r\n".encode() in reply


def _can_die_with_parent() -> bool:
    # PR_SET_PDEATHSIG fires when the forking *thread* ends, so only use it from the main thread.
    return sys.platform == "linux" and threading.current_thread() is threading.main_thread()


def _die_with_parent():
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class RedisServerProcess:
    """A redis-server on 127.0.0.1 (``port`` or a free one) with its data in ``directory``."""

    def __init__(self, directory, port=None, *, ready_timeout=10.0):
        self.directory = str(directory)
        self.port = port
        self._ready_timeout = ready_timeout
        self._process = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self):
        return self._process.pid if self.running else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> "RedisServerProcess":
        """Start (or restart, on the same port and dir) and return once it answers PING; no-op if running."""
        if self.running:
            return self
        if self.port is not None:
            if self._launch():
                return self
        else:
            for _ in range(_PORT_ATTEMPTS):  # another process may grab the free port before redis binds it
                self.port = free_port()
                if self._launch():
                    return self
        raise RuntimeError(f"redis-server would not start on 127.0.0.1:{self.port}:\n{self._log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (redis flushes its AOF), wait; SIGKILL if it takes longer than ``timeout``."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def kill(self) -> None:
        """SIGKILL, like a crash: writes of the last second may not be on disk."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    def _launch(self) -> bool:
        """Run redis-server on self.port; True once it answers PING, False if it exited (e.g. port taken)."""
        conf = os.path.join(self.directory, "redis.conf")
        with open(conf, "w") as f:
            f.write(f'bind 127.0.0.1\nport {self.port}\ndir "{self.directory}"\nsave ""\n'
                    f"appendonly yes\nappendfsync everysec\ndaemonize no\n")
        with open(os.path.join(self.directory, "redis.log"), "ab") as log:
            self._process = subprocess.Popen(
                [find_redis_server(), conf], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if _can_die_with_parent() else None)
        deadline = time.monotonic() + self._ready_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._process = None
                return False
            if _serves(self.port, self._process.pid):
                return True
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server on 127.0.0.1:{self.port} did not answer PING:\n{self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            with open(os.path.join(self.directory, "redis.log"), errors="replace") as f:
                return "".join(f.readlines()[-20:])
        except OSError:
            return "(no log)"
