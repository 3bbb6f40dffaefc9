"""Run ``twistd -n p2pd --role=peer`` as a real process for end-to-end tests and benchmarks.

    with PeerProcess(tmp_path / "alice", "alice", registry.http) as alice:
        alice.ctl("status")                       # one control-socket request -> result (raises on error)
        alice.kill(); alice.start()               # SIGKILL, then start again on the same data dir

Binds and advertises 127.0.0.1 only; stops what it started, by pid.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


class ControlError(Exception):
    def __init__(self, reply):
        super().__init__("%s: %s" % (reply.get("error"), reply.get("message")))
        self.code = reply.get("error")
        self.reply = reply


class PeerProcess:
    def __init__(self, data_dir, name, registry_url, args=()):
        self.data_dir = str(data_dir)
        self.name = name
        self.registry_url = registry_url
        self.args = list(args)
        self.proc = None
        self.info = None
        self.log_path = os.path.join(self.data_dir, "twistd.log")
        self._next_id = 0

    def command(self):
        return [TWISTD, "-n", "--pidfile=", "--logfile", self.log_path, "p2pd", "--role=peer",
                "--name", self.name, "--data-dir", self.data_dir, "--registry", self.registry_url,
                "--listen", "tcp:0:interface=127.0.0.1", "--udp", "127.0.0.1:0", "--advertise", "127.0.0.1"
                ] + self.args

    def start(self, timeout=20, wait_registered=True):
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        info_path = os.path.join(self.data_dir, "peer.json")
        if os.path.exists(info_path):
            os.unlink(info_path)
        self.proc = subprocess.Popen(self.command(), cwd=self.data_dir, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("peer %s exited with %s: %s\n%s" % (
                    self.name, self.proc.returncode, self.proc.stderr.read().decode(errors="replace"),
                    self.log_tail()))
            if os.path.exists(info_path):
                self.info = json.load(open(info_path))
                if self.info.get("pid") == self.proc.pid:
                    break
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("peer %s did not start\n%s" % (self.name, self.log_tail()))
            time.sleep(0.05)
        if wait_registered:
            self.wait_for(lambda: self.ctl("status")["registry"]["state"] == "online", timeout,
                          "%s registered" % self.name)
        return self

    def wait_for(self, predicate, timeout=20, what="condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return
            except (OSError, ControlError):
                pass
            time.sleep(0.1)
        raise AssertionError("timed out waiting for %s\n%s" % (what, self.log_tail()))

    @property
    def control_path(self):
        return os.path.join(self.data_dir, "control.sock")

    def ctl(self, cmd, timeout=30, **args):
        """Send one control request and return its result; ControlError for an error reply."""
        self._next_id += 1
        request = dict(args, id=self._next_id, cmd=cmd)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(self.control_path)
            s.sendall(json.dumps(request).encode() + b"\n")
            buf = b""
            while True:
                while b"\n" not in buf:
                    chunk = s.recv(65536)
                    if not chunk:
                        raise OSError("control socket closed")
                    buf += chunk
                line, buf = buf.split(b"\n", 1)
                reply = json.loads(line)
                if reply.get("id") == self._next_id:
                    break
        if not reply.get("ok"):
            raise ControlError(reply)
        return reply.get("result")

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def log_tail(self, lines=40):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._close()

    def stop(self, timeout=15):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._close()

    def _close(self):
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
