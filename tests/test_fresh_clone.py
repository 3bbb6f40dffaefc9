"""The README's main command works as a new user runs it: a fresh `git clone`, then `./dev up`."""

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.mark.skipif(not os.path.isdir(os.path.join(ROOT, ".git")) or not shutil.which("git"),
                    reason="needs a git checkout")
def test_dev_up_from_a_fresh_clone(tmp_path):
    """`./dev up` in a fresh clone bootstraps its virtualenv, serves a healthy registry with its own Redis, and
    two peers that exchange a message; Ctrl-C (SIGTERM here) stops everything. Run again, it leaves the state as
    it found it (issue 13, bug 10: every run added a `hello (N).txt` to alice's inbox)."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", ROOT, str(clone)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "P2PD_", "PYTHONPATH"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    env["P2PD_DEVNET_DIR"] = str(tmp_path / "var")
    dev_up(clone, env, tmp_path, "up.log")
    inbox = tmp_path / "var" / "alice" / "inbox"
    assert sorted(p.name for p in inbox.iterdir() if not p.name.startswith(".")) == ["hello.txt"]
    output = dev_up(clone, env, tmp_path, "up-again.log")
    assert "from an earlier run, which stays; the new copy is removed" in output
    assert sorted(p.name for p in inbox.iterdir() if not p.name.startswith(".")) == ["hello.txt"]


def dev_up(clone, env, tmp_path, log_name):
    """Run `./dev up` until the network is up, check it, stop it; its output."""
    log = open(tmp_path / log_name, "wb")
    proc = subprocess.Popen(["./dev", "up", "--http", "tcp:0:interface=127.0.0.1", "--stun", "127.0.0.1:0"],
                            cwd=clone, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    info_path = tmp_path / "var" / "registry" / "registry.json"
    try:
        deadline = time.monotonic() + 480
        while b"Press Ctrl-C" not in (tmp_path / log_name).read_bytes():
            assert proc.poll() is None, (tmp_path / log_name).read_text(errors="replace")
            assert time.monotonic() < deadline, "no registry after 480 s"
            time.sleep(0.5)
        assert (clone / ".venv" / "bin" / "python").exists()
        info = json.loads(info_path.read_text())
        with urllib.request.urlopen(info["http"] + "/v1/health", timeout=5) as response:
            assert json.load(response)["status"] == "ok"
        with urllib.request.urlopen(info["http"] + "/v1/rooms", timeout=5) as response:
            assert [r["name"] for r in json.load(response)["rooms"]] == ["General"]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the session we started: ./dev exec'd into twistd
            proc.wait(30)
        log.close()
    output = (tmp_path / log_name).read_text(errors="replace")
    assert "p2pd registry listening" in output
    assert "alice -> bob: 'hello bob, this is alice" in output and "... delivered (direct)" in output
    assert "bob's history with alice now ends with: 'hello bob" in output
    assert "Traceback" not in output
    assert not os.path.exists(tmp_path / "var" / "registry" / "redis.sock"), "Redis was not stopped"
    return output
