"""``./dev up``: p2pd's main job on embedded defaults, in the foreground: a small local network.

It starts a registry with its own Redis (HTTP API on 127.0.0.1:8000, STUN on 127.0.0.1:3478) and two peers,
alice and bob, all on loopback with their state in ``var/`` of the checkout; shows alice and bob exchanging a
message; then tells you how to drive them with p2pctl, and keeps running until Ctrl-C, which stops all three.

Options: ``--http ENDPOINT`` and ``--stun [HOST:]PORT`` for the registry (e.g. ``--http tcp:9000:interface=127.0.0.1``),
``--peers NAME,NAME`` (default alice,bob), ``--registry-only``. The state directory is ``$P2PD_DEVNET_DIR`` or ``var/``.
"""

import argparse
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
TWISTD = os.path.join(BIN, "twistd")


class Child:
    def __init__(self, label, args, data_dir, info_file):
        self.label = label
        self.args = args
        self.data_dir = data_dir
        self.info_path = os.path.join(data_dir, info_file)
        self.log_path = os.path.join(data_dir, "twistd.log")
        self.proc = None
        self.info = None

    def start(self, timeout=60):
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        if os.path.exists(self.info_path):
            os.unlink(self.info_path)
        cmd = [TWISTD, "-n", "--pidfile=", "--logfile", self.log_path, "p2pd"] + self.args
        self.proc = subprocess.Popen(cmd, cwd=self.data_dir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace").strip() or self.reason_in_log()
                raise RuntimeError("%s stopped: %s (log: %s)" % (self.label, err or "see the log", self.log_path))
            try:
                with open(self.info_path) as f:
                    self.info = json.load(f)
                if self.info.get("pid") == self.proc.pid:
                    return self
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        raise RuntimeError("%s did not start within %d s (log: %s)" % (self.label, timeout, self.log_path))

    def reason_in_log(self):
        """The last ``p2pd: ...`` line of the log (twistd puts what a failed start says there, not on stderr)."""
        try:
            with open(self.log_path, errors="replace") as f:
                lines = [line.split("] ", 1)[-1].strip() for line in f if "p2pd: " in line]
        except OSError:
            return ""
        return lines[-1][len("p2pd: "):] if lines and lines[-1].startswith("p2pd: ") else (lines[-1] if lines else "")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def control(data_dir, cmd, timeout=30, **args):
    """One request on a peer's control socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(os.path.join(data_dir, "control.sock"))
        s.sendall(json.dumps(dict(args, id=1, cmd=cmd)).encode() + b"\n")
        buf = b""
        while True:
            while b"\n" not in buf:
                chunk = s.recv(65536)
                if not chunk:
                    raise RuntimeError("control socket closed")
                buf += chunk
            line, buf = buf.split(b"\n", 1)
            reply = json.loads(line)
            if "ok" in reply:  # not a progress line of a send or get
                break
    if not reply.get("ok"):
        raise RuntimeError("%s: %s" % (reply.get("error"), reply.get("message")))
    return reply["result"]


def shown(path):
    """*path* relative to the current directory when it is below it, else absolute."""
    rel = os.path.relpath(path, os.getcwd())
    return os.path.abspath(path) if rel.startswith("..") else rel


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (OSError, RuntimeError, ValueError):
            pass
        time.sleep(0.2)
    raise RuntimeError("timed out waiting for " + what)


def forget_repeat(saved, first):
    """The demo leaves the state as it found it: a copy fetched again, identical to the one an earlier run left
    (*first*), is removed, so that every ``./dev up`` does not add a ``hello (N).txt``."""
    if saved == first or not os.path.isfile(first):
        return
    with open(saved, "rb") as new, open(first, "rb") as old:
        if new.read() != old.read():
            return
    os.remove(saved)
    print("  (the same as %s from an earlier run, which stays; the new copy is removed)" % shown(first), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="./dev up", description=__doc__.split("\n\n")[1])
    parser.add_argument("--http", default="tcp:8000:interface=127.0.0.1")
    parser.add_argument("--stun", default="127.0.0.1:3478")
    parser.add_argument("--peers", default="alice,bob")
    parser.add_argument("--registry-only", action="store_true")
    args = parser.parse_args(argv)
    state = os.environ.get("P2PD_DEVNET_DIR") or os.path.join(ROOT, "var")
    names = [n for n in args.peers.split(",") if n] if not args.registry_only else []
    children = []

    def shutdown(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, shutdown)
    try:
        print("p2pd: starting a registry with its own Redis ...", flush=True)
        registry = Child("registry", ["--role=registry", "--data-dir", os.path.join(state, "registry"),
                                      "--http", args.http, "--stun", args.stun], os.path.join(state, "registry"),
                         "registry.json").start()
        children.append(registry)
        url = registry.info["http"]
        print("p2pd registry listening: HTTP API %s (OpenAPI: %s), STUN udp %s"
              % (registry.info["api"], registry.info["api"] + "openapi.json", registry.info["stun"]), flush=True)
        peers = {}
        for name in names:
            data_dir = os.path.join(state, name)
            share = os.path.join(state, name + "-share")
            os.makedirs(share, exist_ok=True)
            with open(os.path.join(share, "hello.txt"), "w") as f:
                f.write("hello from %s's shared folder\n" % name)
            peer = Child(name, ["--role=peer", "--name", name, "--data-dir", data_dir, "--registry", url,
                                "--listen", "tcp:0:interface=127.0.0.1", "--udp", "127.0.0.1:0",
                                "--advertise", "127.0.0.1", "--share", share], data_dir, "peer.json").start()
            children.append(peer)
            peers[name] = data_dir
        for name, data_dir in peers.items():
            wait_until(lambda d=data_dir: control(d, "status")["registry"]["state"] == "online", 30,
                       name + " to register")
            print("p2pd peer %s is online (links on tcp %s)" % (name, json.load(
                open(os.path.join(data_dir, "peer.json")))["tcp"]), flush=True)
        if len(names) >= 2:
            a, b = names[0], names[1]
            text = "hello %s, this is %s (%s)" % (b, a, time.strftime("%H:%M:%S"))
            outcome = control(peers[a], "msg", to=b, text=text)
            print("%s -> %s: %r ... %s (%s)" % (a, b, text, outcome["status"], outcome["via"]), flush=True)
            received = [m for m in control(peers[b], "history", conversation=a, limit=5)
                        if m["direction"] == "in"]
            print("%s's history with %s now ends with: %r" % (b, a, received[-1]["body"]), flush=True)
            got = control(peers[a], "get", peer=b, name="hello.txt", timeout=60)
            saved = os.path.join(peers[a], "inbox", got["saved"][0])
            print("%s fetched hello.txt from %s's shared folder: %d bytes, verified, saved as %s" % (
                a, b, got["bytes"], shown(saved)), flush=True)
            forget_repeat(saved, os.path.join(peers[a], "inbox", "hello.txt"))
        p2pctl = shown(os.path.join(BIN, "p2pctl"))
        print("\nThe network is up. In another terminal, for example:")
        if names:
            first, other = names[0], names[-1]
            d = shlex.quote(shown(peers[first]))
            print("  %s --data-dir %s status" % (p2pctl, d))
            print("  %s --data-dir %s peers" % (p2pctl, d))
            print("  %s --data-dir %s msg %s 'hi there'" % (p2pctl, d, other))
            print("  %s --data-dir %s chat %s" % (p2pctl, shlex.quote(shown(peers[other])),
                                                  first))
            print("  %s --data-dir %s history %s" % (p2pctl, d, other))
            print("  %s --data-dir %s shell                  # chat rooms: create, join, public, ..." % (p2pctl, d))
            print("  %s --data-dir %s send %s README.md     # %s is asked first:" % (p2pctl, d, other, other))
            print("  %s --data-dir %s transfers             #   the offer, then accept ID" % (
                p2pctl, shlex.quote(shown(peers[other]))))
            print("  %s --data-dir %s ls %s; %s --data-dir %s get %s hello.txt" % (p2pctl, d, other, p2pctl, d,
                                                                                 other))
        print("  curl -s %s/v1/peers" % url)
        print("Logs: %s/*/twistd.log. Press Ctrl-C to stop everything." % shown(state),
              flush=True)
        while all(c.proc.poll() is None for c in children):
            time.sleep(0.5)
        dead = [c.label for c in children if c.proc.poll() is not None]
        print("p2pd: %s stopped unexpectedly; stopping the rest (see its twistd.log)" % ", ".join(dead))
        return 1
    except KeyboardInterrupt:
        print("\np2pd: stopping ...", flush=True)
        return 0
    except RuntimeError as e:
        print("p2pd: %s" % e, file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for child in reversed(children):
            child.stop()


if __name__ == "__main__":
    sys.exit(main())
