"""A ``twistd -n p2pd ...`` child process for end-to-end tests and benchmarks: started in its data dir, ready
once it has written its info file (``registry.json`` / ``peer.json``) with its own pid, stopped by that pid."""

import json
import os
import resource
import signal
import subprocess
import sys
import time

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def rss_kb(pid):
    """Resident memory of process *pid*, in KiB."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for pid %d" % pid)


class TwistdProcess:
    label = "twistd"
    info_file = None  # written by the daemon once it listens

    def __init__(self, data_dir, args=()):
        self.data_dir = str(data_dir)
        self.args = list(args)
        self.proc = None
        self.info = None
        self.log_path = os.path.join(self.data_dir, "twistd.log")
        self.limits = {}  # resource.RLIMIT_* -> (soft, hard) the process starts with

    def role_args(self):
        raise NotImplementedError

    def command(self):
        return [TWISTD, "-n", "--pidfile=", "--logfile", self.log_path, "p2pd"] + self.role_args() + self.args

    def spawn(self, timeout=20):
        """Start the process and wait for its info file; RuntimeError (with the log) if it does not come up."""
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        info_path = os.path.join(self.data_dir, self.info_file)
        if os.path.exists(info_path):
            os.unlink(info_path)
        limits = dict(self.limits)

        def apply_limits():
            for which, values in limits.items():
                resource.setrlimit(which, values)

        self.proc = subprocess.Popen(self.command(), cwd=self.data_dir, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     preexec_fn=apply_limits if limits else None)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited with %s: %s\n%s" % (
                    self.label, self.proc.returncode, self.proc.stderr.read().decode(errors="replace"),
                    self.log_tail()))
            try:
                with open(info_path) as f:
                    self.info = json.load(f)
                if self.info.get("pid") == self.proc.pid:
                    return self
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("%s did not start within %ss\n%s" % (self.label, timeout, self.log_tail()))

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
        """SIGKILL the process, as a crash would."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._close()

    def stop(self, timeout=15):
        """SIGTERM and wait (SIGKILL after *timeout*)."""
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

    def __exit__(self, *exc):
        self.stop()
