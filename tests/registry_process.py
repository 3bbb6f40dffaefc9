"""Run ``twistd -n p2pd --role=registry`` as a real process for end-to-end tests and benchmarks.

    with RegistryProcess(tmp_path / "reg") as reg:           # embedded Redis, HTTP and STUN on free ports
        reg.http          # "http://127.0.0.1:PORT"
        reg.stun          # ("127.0.0.1", PORT) or None
        reg.kill()        # SIGKILL the registry (its redis-server child is left orphaned, as in real life)
        reg.start()       # start again on the same data dir (ports are new unless fixed with http_port=)

Everything binds 127.0.0.1. ``stop()`` (and leaving the ``with``) sends SIGTERM to the pid it started and waits;
it never kills anything by name. Extra twistd options go in ``args``; ``redis_url`` points it at an external Redis.

Every client of a test registry is on 127.0.0.1, one address for what would be many machines, so the limits per
client address are lifted unless a test asks for them: the rate limit (``rate_limit="0"``) and the registry's
quota of new names per address (``registry_limits``, the whole ``--limits`` text; ``registry_limits=None`` gives
the registry's own defaults). tests/test_registry_limits.py checks those limits in process.
"""

import os
import signal
import time

from tests.twistd_process import TwistdProcess

UNLIMITED_CLAIMS = "claims-per-address-per-hour=100000"


class RegistryProcess(TwistdProcess):
    label = "registry"
    info_file = "registry.json"

    def __init__(self, data_dir, redis_url=None, args=(), http_port=0, stun=True, rate_limit="0",
                 registry_limits=UNLIMITED_CLAIMS):
        super().__init__(data_dir, args)
        self.redis_url = redis_url
        self.http_port = http_port
        self.stun_enabled = stun
        self.rate_limit = rate_limit
        self.registry_limits = registry_limits

    def role_args(self):
        cmd = ["--role=registry", "--data-dir", self.data_dir, "--http", "tcp:%d:interface=127.0.0.1" % self.http_port,
               "--stun", "127.0.0.1:0" if self.stun_enabled else "0", "--rate-limit", self.rate_limit]
        if self.redis_url:
            cmd += ["--redis", self.redis_url]
        if self.registry_limits:
            cmd += ["--limits", self.registry_limits]
        return cmd

    def start(self, timeout=20):
        self.spawn(timeout)
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

    def stop(self, timeout=15):
        super().stop(timeout)
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

