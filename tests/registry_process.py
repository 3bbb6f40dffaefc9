"""Run ``twistd -n p2pd --role=registry`` as a real process for end-to-end tests and benchmarks.

    with RegistryProcess(tmp_path / "reg") as reg:           # embedded Redis, HTTP and STUN on free ports
        reg.http          # "http://127.0.0.1:PORT"
        reg.stun          # ("127.0.0.1", PORT) or None
        reg.kill()        # SIGKILL the registry (its redis-server child is left orphaned, as in real life)
        reg.start()       # start again on the same data dir (ports are new unless fixed with http_port=)

Everything binds 127.0.0.1. ``stop()`` (and leaving the ``with``) sends SIGTERM to the pid it started and waits;
it never kills anything by name. Extra twistd options go in ``args``; ``redis_url`` points it at an external Redis.
"""

import json
import os
import signal
import subprocess
import sys
import time

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


class RegistryProcess:
    def __init__(self, data_dir, redis_url=None, args=(), http_port=0, stun=True, rate_limit="0"):
        self.data_dir = str(data_dir)
        self.redis_url = redis_url
        self.args = list(args)
        self.http_port = http_port
        self.stun_enabled = stun
        self.rate_limit = rate_limit
        self.proc = None
        self.info = None
        self.log_path = os.path.join(self.data_dir, "twistd.log")

    def command(self):
        cmd = [TWISTD, "-n", "--pidfile=", "--logfile", self.log_path, "p2pd", "--role=registry", "--data-dir", self.data_dir,
               "--http", "tcp:%d:interface=127.0.0.1" % self.http_port,
               "--stun", "127.0.0.1:0" if self.stun_enabled else "0", "--rate-limit", self.rate_limit]
        if self.redis_url:
            cmd += ["--redis", self.redis_url]
        return cmd + self.args

    def start(self, timeout=20):
        os.makedirs(self.data_dir, exist_ok=True)
        info_path = os.path.join(self.data_dir, "registry.json")
        if os.path.exists(info_path):
            os.unlink(info_path)
        self.proc = subprocess.Popen(self.command(), cwd=self.data_dir, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("registry exited with %s: %s\n%s" % (
                    self.proc.returncode, self.proc.stderr.read().decode(errors="replace"), self.log_tail()))
            if os.path.exists(info_path):
                with open(info_path) as f:
                    self.info = json.load(f)
                if self.info.get("pid") == self.proc.pid:
                    break
            time.sleep(0.05)
        else:
            self.stop()
            raise RuntimeError("registry did not start within %ss\n%s" % (timeout, self.log_tail()))
        self.http_port = int(self.info["http"].rsplit(":", 1)[1])
        return self

    def wait_healthy(self, timeout=20):
        """Wait until /v1/health answers 200 (the embedded Redis is up)."""
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.http + "/v1/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("registry not healthy within %ss\n%s" % (timeout, self.log_tail()))

    @property
    def http(self):
        return self.info["http"]

    @property
    def stun(self):
        if not self.info.get("stun"):
            return None
        host, port = self.info["stun"].rsplit(":", 1)
        return host, int(port)

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
        """SIGKILL the registry process, as a crash would."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self, timeout=15):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None
        self._stop_orphan_redis()

    def _stop_orphan_redis(self):
        """A SIGKILLed registry leaves its redis-server behind; stop it by the pid in its pidfile, if it is
        really our redis-server (its command line names our data dir's config)."""
        pid_path = os.path.join(self.data_dir, "redis.pid")
        try:
            pid = int(open(pid_path).read().strip())
            cmdline = open("/proc/%d/cmdline" % pid, "rb").read().decode(errors="replace")
        except (OSError, ValueError):
            return
        if os.path.join(self.data_dir, "redis.conf") in cmdline:
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if not os.path.exists("/proc/%d" % pid):
                    break
                time.sleep(0.05)

    def __enter__(self):
        self.start()
        self.wait_healthy()
        return self

    def __exit__(self, *exc):
        self.stop()
