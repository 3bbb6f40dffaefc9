"""A blocking client of the control socket (:mod:`p2pd.peer.control`), usable from several threads.

A reader thread splits the daemon's lines into replies, handed to the thread waiting for that id, and events,
put on :attr:`ControlClient.events` (``None`` marks the end of the connection)."""

import itertools
import json
import os
import queue
import shlex
import shutil
import socket
import sys
import threading

from p2pd.cli.exits import CliError, DaemonError, NoDaemon, Unavailable


def program(name, path=None):
    """How to run the program *name* (``twistd``, ``p2pctl``) as typed here: its name if it is on PATH, else its
    full path beside the Python running us (the virtualenv's ``bin``, which ``./dev`` does not put on PATH)."""
    beside = os.path.join(os.path.dirname(sys.executable), name)
    if shutil.which(name, path=path) or not os.access(beside, os.X_OK):
        return name
    return shlex.quote(beside)


def start_hint(path=None):
    return "start one with: %s -n p2pd --role=peer --name=NAME" % program("twistd", path)


def encode(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=True, separators=(",", ":")).encode("ascii") + b"\n"


class _Waiter:
    def __init__(self, on_progress=None):
        self.done = threading.Event()
        self.reply = None
        self.on_progress = on_progress  # called (in the reader thread) with each progress line's dict


class ControlClient:
    def __init__(self, path, timeout=30.0, label=None):
        self.path = path
        self.timeout = timeout
        self.label = label or path
        self.sock = None
        self.events = queue.Queue()
        self.closed = None  # why the connection ended, once it has
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._pending = {}
        self._reader = None

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(min(self.timeout, 10.0))
        try:
            sock.connect(self.path)
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            raise NoDaemon("no p2pd daemon is running for %s (nothing listens on %s)" % (self.label, self.path),
                           hint=start_hint()) from None
        except PermissionError:
            sock.close()
            raise CliError("cannot connect to %s: permission denied (the daemon belongs to another user?)"
                           % self.path) from None
        except socket.timeout:
            sock.close()
            raise Unavailable("the daemon at %s does not accept connections" % self.path,
                              hint="it may be overloaded; try again") from None
        except OSError as e:
            sock.close()
            raise CliError("cannot connect to %s: %s" % (self.path, e.strerror or e)) from None
        sock.settimeout(None)
        self.sock = sock
        self._reader = threading.Thread(target=self._read, name="p2pctl-reader", daemon=True)
        self._reader.start()
        return self

    def close(self):
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(2)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # reading

    def _read(self):
        reason = "the daemon closed the connection"
        try:
            with self.sock.makefile("rb") as lines:
                for line in lines:
                    try:
                        message = json.loads(line.decode("utf-8"))
                    except ValueError:
                        continue  # not ours to crash on; the daemon never sends this
                    if not isinstance(message, dict):
                        continue
                    if "event" in message and "ok" not in message:
                        self.events.put(message)
                    elif "progress" in message and "ok" not in message:
                        self._progress(message)
                    else:
                        self._reply(message)
        except (OSError, ValueError):
            pass
        self._finish(reason)

    def _reply(self, message):
        with self._lock:
            waiter = self._pending.pop(message.get("id"), None)
            if waiter is None and message.get("id") is None and message.get("ok") is False:
                # about the whole connection (refused, line too long): every request gets it
                waiters, self._pending = list(self._pending.values()), {}
            else:
                waiters = [waiter] if waiter is not None else []
        for w in waiters:
            w.reply = message
            w.done.set()
        if message.get("id") is None and message.get("ok") is False:
            self.closed = DaemonError(message.get("error"), message.get("message"), message)

    def _progress(self, message):
        with self._lock:
            waiter = self._pending.get(message.get("id"))
        if waiter is not None and waiter.on_progress is not None and isinstance(message["progress"], dict):
            waiter.on_progress(message["progress"])

    def _finish(self, reason):
        with self._lock:
            if self.closed is None:
                self.closed = Unavailable(reason, hint="is the daemon shutting down? try again")
            waiters, self._pending = list(self._pending.values()), {}
        for w in waiters:
            w.done.set()
        self.events.put(None)

    # requests

    def send(self, cmd, on_progress=None, **args):
        """Send one request; returns a waiter for :meth:`wait`. *on_progress* gets the request's progress lines."""
        request_id = next(self._ids)
        waiter = _Waiter(on_progress)
        data = encode(dict(args, id=request_id, cmd=cmd))
        with self._lock:
            if self.closed is not None:
                raise self.closed
            self._pending[request_id] = waiter
            try:
                self.sock.sendall(data)
            except OSError:
                self._pending.pop(request_id, None)
                raise Unavailable("the daemon closed the connection", hint="try again") from None
        return waiter

    def wait(self, waiter, timeout=None):
        timeout = self.timeout if timeout is None else timeout
        if not waiter.done.wait(timeout):
            raise Unavailable("the daemon did not answer within %g seconds" % timeout,
                              hint="it may be busy; try again or raise --timeout")
        reply = waiter.reply
        if reply is None:
            raise self.closed
        if reply.get("ok") is True:
            return reply.get("result")
        raise DaemonError(reply.get("error"), reply.get("message"), reply)

    def request(self, cmd, timeout=None, **args):
        """Send one request and return its result, or raise :class:`DaemonError` / :class:`Unavailable`."""
        return self.wait(self.send(cmd, **args), timeout)
