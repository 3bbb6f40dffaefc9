"""Run ``twistd -n p2pd --role=peer`` as a real process for end-to-end tests and benchmarks.

    with PeerProcess(tmp_path / "alice", "alice", registry.http) as alice:
        alice.ctl("status")                       # one control-socket request -> result (raises on error)
        alice.kill(); alice.start()               # SIGKILL, then start again on the same data dir

Binds and advertises 127.0.0.1 only; stops what it started, by pid.
"""

import json
import os
import socket
import threading
import time

from tests.twistd_process import TwistdProcess


class ControlError(Exception):
    def __init__(self, reply):
        super().__init__("%s: %s" % (reply.get("error"), reply.get("message")))
        self.code = reply.get("error")
        self.reply = reply


class PeerProcess(TwistdProcess):
    label = "peer"
    info_file = "peer.json"

    def __init__(self, data_dir, name, registry_url, args=()):
        super().__init__(data_dir, args)
        self.name = name
        self.label = "peer " + name
        self.registry_url = registry_url
        self._next_id = 0
        self._ids = threading.Lock()

    def role_args(self):
        return ["--role=peer", "--name", self.name, "--data-dir", self.data_dir, "--registry", self.registry_url,
                "--listen", "tcp:0:interface=127.0.0.1", "--udp", "127.0.0.1:0", "--advertise", "127.0.0.1"]

    def start(self, timeout=20, wait_registered=True):
        self.spawn(timeout)
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
        with self._ids:  # callable from several threads at once: each waits for its own reply
            self._next_id += 1
            request_id = self._next_id
        request = dict(args, id=request_id, cmd=cmd)
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
                if reply.get("id") == request_id and "ok" in reply:  # not a progress line
                    break
        if not reply.get("ok"):
            raise ControlError(reply)
        return reply.get("result")

    def __enter__(self):
        return self.start()
