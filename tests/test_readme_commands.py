"""The README's commands as a new user types them (issue 13, bug 2): a registry and a peer started by hand in the
same directory, then p2pctl, with nothing but HOME pointing at a fresh home. Only the ports differ (free ones on
127.0.0.1 instead of :8000 and :3478, which this machine may be using)."""

import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest

from tests.twistd_process import TWISTD

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


def readme_block(marker):
    """The commands of the README's sh block that holds *marker*, without their comments."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        if marker in block:
            return [line.split("#")[0].strip().rstrip("&").strip() for line in block.splitlines()
                    if line.split("#")[0].strip()]
    raise AssertionError("no README block with %r" % marker)


def free_port(kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_registry_and_a_peer_started_by_hand_side_by_side(tmp_path):
    registry_cmd, peer_cmd, status_cmd = readme_block("--role=peer --name=alice &")
    assert registry_cmd == "twistd -n p2pd --role=registry" and peer_cmd.startswith("twistd -n p2pd --role=peer")
    http = free_port()
    env = dict(os.environ, HOME=str(tmp_path / "home"), PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
    env.pop("XDG_DATA_HOME", None)
    work = tmp_path / "work"
    work.mkdir()
    url = "http://127.0.0.1:%d" % http
    commands = [registry_cmd.split() + ["--http", "tcp:%d:interface=127.0.0.1" % http, "--stun", "127.0.0.1:0"],
                peer_cmd.split() + ["--registry", url, "--listen", "tcp:0:interface=127.0.0.1", "--udp",
                                    "127.0.0.1:0", "--advertise", "127.0.0.1"]]
    procs = []
    try:
        for command in commands:
            procs.append(subprocess.Popen(command, cwd=work, env=env, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
            time.sleep(1)
        data = tmp_path / "home" / ".local" / "share" / "p2pd"
        deadline = time.monotonic() + 60
        while True:
            out = subprocess.run(status_cmd.split() + ["--json"], cwd=work, env=env, capture_output=True,
                                 text=True, timeout=30)
            if out.returncode == 0 and json.loads(out.stdout)["registry"]["state"] == "online":
                break
            for proc in procs:
                assert proc.poll() is None, proc.stdout.read().decode(errors="replace")
            assert time.monotonic() < deadline, out.stderr
            time.sleep(0.5)
        assert json.loads(out.stdout)["name"] == "alice"
        assert os.listdir(work) == [], "left in the working directory: %s" % os.listdir(work)
        pids = {role: int((data / role / "twistd.pid").read_text()) for role in ("registry", "alice")}
        assert pids == {"registry": procs[0].pid, "alice": procs[1].pid}
        assert subprocess.run([TWISTD, "--version"], capture_output=True).returncode == 0
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            proc.stdout.close()


def redis_servers_of(path):
    """Pids of processes whose command line mentions *path* and redis-server (looked up in /proc, never killed)."""
    found = []
    for pid in os.listdir("/proc"):
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                cmdline = f.read().decode(errors="replace")
        except OSError:
            continue
        if pid.isdigit() and "redis-server" in cmdline and str(path) in cmdline:
            found.append(int(pid))
    return found


def test_a_registry_whose_port_is_taken_says_so_and_leaves_nothing_running(tmp_path):
    """Issue 13, bug 4: a registry that could not bind its port left its redis-server orphaned, and ./dev up
    said only `registry stopped: see the log`. Now the reason is on the terminal, by hand and under ./dev up."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run([TWISTD, "-n", "--pidfile=", "p2pd", "--role=registry", "--data-dir",
                              str(tmp_path / "reg"), "--http", "tcp:%d:interface=127.0.0.1" % port, "--stun",
                              "127.0.0.1:0"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 1
        assert "p2pd: cannot listen on 127.0.0.1:%d: [Errno 98] Address already in use" % port in out.stdout + out.stderr
        assert "Traceback" not in out.stdout + out.stderr
        env = dict(os.environ, P2PD_DEVNET_DIR=str(tmp_path / "net"))
        out = subprocess.run([sys.executable, "-m", "p2pd.devnet", "--http", "tcp:%d:interface=127.0.0.1" % port,
                              "--stun", "127.0.0.1:0"], capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
        assert out.returncode == 1
        assert "registry stopped: cannot listen on 127.0.0.1:%d" % port in out.stderr, out.stderr
    time.sleep(0.5)
    assert redis_servers_of(tmp_path) == []


def test_a_normal_registry_start_logs_no_warning(tmp_path):
    """Issue 13: every start warned `pruning skipped: Redis is not connected yet` (the first prune came before
    the embedded Redis answered)."""
    from tests.registry_process import RegistryProcess
    with RegistryProcess(tmp_path / "registry") as registry:
        registry.wait_healthy()
        time.sleep(1)
        log = open(registry.log_path, errors="replace").read()
    assert "pruning skipped" not in log and "#warn" not in log, log[-2000:]
