"""File transfer between two peer daemons, side by side with a plain socket copy and with magic-wormhole.

    .venv/bin/python benchmarks/file_bench.py [--size 1G] [--runs 5] [--no-wormhole] [--json] [--strict] [--keep]

One run writes a file of ``--size`` random bytes (in 1 MiB chunks, hashed with SHA-256 as it is written) into a
fresh temporary directory, then copies it on loopback, each method ``--runs`` times, every copy to a file in
that same directory (so on the same filesystem), and checks the SHA-256 of every copy after its timing stopped.
Before every timed copy it calls ``sync()``, so that no method is throttled by the dirty pages of the one before
(one unmeasured socket copy comes first: on a VM the first GiB written into fresh page cache is much slower;
likewise one unmeasured p2pd send of another file of the same size, on the freshly started daemons):

(a) socket copy: a child process ``os.sendfile``s the file into a TCP socket on 127.0.0.1; this process
    ``recv_into``s a preallocated buffer and ``os.write``s it to a file. Timed from ``accept`` (the connection
    is up) to the last byte written and the file closed. No hashing, no encryption, no fsync: the ceiling.
p2pd: a registry (embedded Redis) and two real peer daemons, ``alice`` and ``bob`` (bob with
    ``--accept auto``), on 127.0.0.1 (:mod:`tests.registry_process`, :mod:`tests.peer_process`). After one chat
    message has set up the alice -> bob link, alice's control socket gets ``{"cmd": "send", "to": "bob",
    "paths": [FILE]}``; timed from writing that request to reading its final reply (progress lines are counted
    and skipped). That includes alice hashing the file for the offer; when the reply says how long the daemon
    spent (``seconds``, ``hash_seconds``), a second row shows the transfer alone. The copy is the reply's
    ``saved`` path (relative to bob's inbox), else ``<bob's data dir>/inbox/<name>``. Both daemons' resident
    memory is sampled every 0.2 s during each transfer, and their peak (``VmHWM``) read at the end.
(b) magic-wormhole: the ``wormhole`` CLI sends the file through a local mailbox server
    (``twist wormhole-mailbox``), all three processes inside a new network namespace that has only loopback
    (``unshare --net``), so the direct connection it sets up can only use 127.0.0.1. Without unshare it runs in
    this namespace with ``--no-listen`` on both sides and a local transit relay (``twist transitrelay``) on
    127.0.0.1 instead. Timed from starting ``wormhole send`` to ``wormhole receive`` exiting (so it includes
    both CLIs starting up); its own ``--dump-timing`` gives the transfer alone.

It prints a table with PASS/FAIL against the targets of issue 5 (p2pd at least 50% of (a) and at least 4x (b),
each daemon's peak memory under 150 MB, every copy intact), comparing median times. Benchmark traffic only ever
goes to 127.0.0.1 (or to loopback inside the namespace it creates). Every process it starts is stopped by its
pid on exit, error or Ctrl-C; the temporary directory is removed unless ``--keep``.

Exit status: 0 when the benchmark ran (whatever the verdict; 1 with ``--strict`` when a target failed),
2 when it could not run, 130 when interrupted.
"""

import argparse
import ctypes
import hashlib
import importlib.util
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from line_echo import CPUMeter  # noqa: E402  (benchmarks/ is the script's dir)
import procs  # noqa: E402
from procs import stop_pid  # noqa: E402


BIN = os.path.dirname(sys.executable)  # the virtualenv's scripts: twistd, twist, wormhole
SOCKET_TARGET = 0.50      # p2pd at least this share of the socket copy's rate
WORMHOLE_TARGET = 4.0     # p2pd at least this many times magic-wormhole's rate
RSS_TARGET_MB = 150.0     # each daemon's peak resident memory below this (MB = 10**6 bytes)
CHUNK = 1 << 20           # file generation, hashing and the socket copy's receive buffer
WORMHOLE_CODE = "7-benchmark-p2pd"
SAMPLE_EVERY = 0.2        # seconds between memory samples of the daemons
MB = 1e6


BenchError = procs.BenchError


# sizes, hashes, memory


def parse_size(text) -> int:
    """``1073741824``, ``64M``, ``1G``, ``512KiB``, ``1.5g``: binary multiples."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text, re.I)
    if not m:
        raise argparse.ArgumentTypeError("not a size: %r (e.g. 1G, 64M, 1048576)" % text)
    scale = 1 << (10 * " kmgt".index(m.group(2).lower() or " "))
    return int(float(m.group(1)) * scale)


def human_size(n) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return ("%d %s" if n % scale == 0 else "%.2f %s") % (n / scale if n % scale else n // scale, unit)
    return "%d bytes" % n


def write_random_file(path, size) -> str:
    """Write *size* random bytes to *path* a chunk at a time and sync it; their SHA-256 (hex)."""
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(CHUNK, left))
            digest.update(chunk)
            f.write(chunk)
            left -= len(chunk)
        f.flush()
        os.fsync(f.fileno())  # on disk (and still cached) now, so its writeback does not slow the copies down
    return digest.hexdigest()


def sha256_file(path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def verify(path, expected_size, expected_hash) -> dict:
    """Size and SHA-256 of the copy at *path*, against the source; timed, but outside every method's timing."""
    began = time.perf_counter()
    try:
        size = os.path.getsize(path)
        ok = size == expected_size and sha256_file(path) == expected_hash
    except OSError as e:
        return {"verified": False, "verify_seconds": 0.0, "verify_error": str(e)}
    return {"verified": ok, "verify_seconds": round(time.perf_counter() - began, 3)}


class MemorySampler:
    """The largest ``VmRSS`` of each named pid, sampled every SAMPLE_EVERY seconds between start() and stop()."""

    def __init__(self, pids):
        self.pids = dict(pids)
        self.peak_kb = {label: 0 for label in self.pids}
        self.samples = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.loop, name="memory-sampler", daemon=True)

    def sample(self):
        for label, pid in self.pids.items():
            kb = procs.proc_status_kb(pid, "VmRSS")
            if kb is not None and kb > self.peak_kb[label]:
                self.peak_kb[label] = kb
        self.samples += 1

    def loop(self):
        while True:
            self.sample()
            if self.stopping.wait(SAMPLE_EVERY):
                return

    def start(self):
        self.thread.start()
        return self

    def stop(self) -> dict:
        self.stopping.set()
        self.thread.join()
        self.sample()
        return {label: round(kb * 1024 / MB, 1) for label, kb in self.peak_kb.items()}


def summary(runs, size) -> dict:
    """Best and median time and rate over *runs* (dicts with ``seconds``)."""
    times = [r["seconds"] for r in runs]
    best, median = min(times), statistics.median(times)
    return {"best_seconds": round(best, 3), "median_seconds": round(median, 3),
            "best_rate": round(size / best / MB, 1), "median_rate": round(size / median / MB, 1)}


try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None


def pdeathsig():
    """In a child, before exec: SIGTERM me when my parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    if _prctl is not None:
        _prctl(1, signal.SIGTERM, 0, 0, 0)


# (a) the socket copy


SENDER = """
import os, socket, sys
port, path = int(sys.argv[1]), sys.argv[2]
with socket.create_connection(("127.0.0.1", port)) as s, open(path, "rb") as f:
    size, offset = os.fstat(f.fileno()).st_size, 0
    while offset < size:
        sent = os.sendfile(s.fileno(), f.fileno(), offset, size - offset)
        if not sent:
            sys.exit("sendfile: nothing sent at offset %d" % offset)
        offset += sent
    s.shutdown(socket.SHUT_WR)
"""


def memory_reclaim() -> list:
    """What this machine does to take freed memory back to its host (a VM's free page reporting, a DAMON
    ``pageout`` scheme), as short notes for the report; empty on a machine that does neither.

    Why it matters here: page cache for a freshly written file comes from free pages, and a free page that was
    reported to the host has been taken back: the first write to it costs a fault in the host. On this project's
    VM (Firecracker) the guest reports free 2 MiB blocks a second or two after they are freed, so the same copy
    of the same file writes into pages that are still in the guest (0.2 s per GiB for ``dd``) or into pages taken
    back (1.5-2 s per GiB), depending on whether the last copy's pages were freed long enough before. Every
    method draws from that lottery; the medians over several runs are what to compare."""
    notes = []
    reporting = "/sys/module/page_reporting/parameters/page_reporting_order"
    if os.path.exists(reporting):
        try:
            with open(reporting) as f:
                order = int(f.read())
            notes.append("free page reporting (blocks of %d KiB go back to the host)" % (4 << order))
        except (OSError, ValueError):
            notes.append("free page reporting")
    damon = pathlib.Path("/sys/kernel/mm/damon/admin/kdamonds")
    try:
        for state in damon.glob("*/state"):
            if state.read_text().strip() == "on" and any(
                    action.read_text().strip() == "pageout" for action in state.parent.glob(
                        "contexts/*/schemes/*/action")):
                notes.append("DAMON pageout of idle page cache")
                break
    except OSError:
        pass
    return notes


def settle():
    """Write back what earlier copies left dirty in the page cache, outside every timing: otherwise each method
    pays for the ones before it (the kernel throttles writers once gigabytes are dirty), and the order of the
    methods decides the result."""
    os.sync()


def socket_copy(source, output, size) -> dict:
    """One copy: a child ``sendfile``s *source* to us on loopback, we ``recv_into`` and write it to *output*."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(30)
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    settle()
    proc = subprocess.Popen([sys.executable, "-c", SENDER, str(listener.getsockname()[1]), str(source)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=pdeathsig)
    try:
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            raise BenchError("the sendfile child did not connect: %s" % proc.stderr.read(2000)) from None
        began = time.perf_counter()
        conn.settimeout(60)
        received = 0
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            while True:
                n = conn.recv_into(buf)
                if not n:
                    break
                done = 0
                while done < n:
                    done += os.write(fd, view[done:n])
                received += n
        finally:
            os.close(fd)
            conn.close()
        seconds = time.perf_counter() - began
        if proc.wait(30) != 0:
            raise BenchError("the sendfile child failed (%s): %s" % (proc.returncode, proc.stderr.read(2000)))
    except socket.timeout:
        raise BenchError("the socket copy stalled") from None
    finally:
        listener.close()
        stop_pid(proc)
        proc.stderr.close()
    if received != size:
        raise BenchError("the socket copy received %d of %d bytes" % (received, size))
    return {"seconds": round(seconds, 4), "rate": round(size / seconds / MB, 1)}


# (b) magic-wormhole


def wormhole_available():
    """None when the wormhole CLI and mailbox server can run here, else why not."""
    missing = [name for name in ("wormhole", "wormhole_mailbox_server") if importlib.util.find_spec(name) is None]
    missing += [os.path.join(BIN, exe) for exe in ("wormhole", "twist") if not os.access(os.path.join(BIN, exe),
                                                                                          os.X_OK)]
    if missing:
        return ("magic-wormhole is not installed (%s missing): skipping (b); install it with "
                "'.venv/bin/pip install -e .[bench]' (./dev bench does)" % ", ".join(missing))
    return None


def netns_works():
    """Whether ``unshare --net`` can make us a namespace with a working loopback (needs root or user namespaces)."""
    if shutil.which("unshare") is None or ip_command() is None:
        return False
    try:
        return subprocess.run(["unshare", "--net", "--", ip_command(), "link", "set", "lo", "up"],
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def ip_command():
    for candidate in (shutil.which("ip"), "/usr/sbin/ip", "/sbin/ip", "/bin/ip"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("%s exited with %s" % (what, proc.returncode))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("%s did not listen on 127.0.0.1:%d within %d s" % (what, port, timeout))


def wait_rusage(proc, timeout):
    """Wait for *proc* (killing it after *timeout* s); its peak RSS in MB, from wait4."""
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return round(usage.ru_maxrss * 1024 / MB, 1)


def tail(path, chars=1500):
    try:
        with open(path, errors="replace") as f:
            return f.read()[-chars:]
    except OSError:
        return ""


def timing_span(path, name):
    """Seconds of the *name* step in a ``wormhole --dump-timing`` file (None when it is not there)."""
    try:
        with open(path) as f:
            for event in json.load(f):
                if event.get("name") == name and event.get("start") and event.get("stop"):
                    return round(event["stop"] - event["start"], 4)
    except (OSError, ValueError, AttributeError, TypeError):
        pass
    return None


def wormhole_driver(spec) -> dict:
    """One magic-wormhole transfer, run in its own process (inside the new network namespace in "netns" mode):
    start a mailbox server (and in "relay" mode a transit relay) on 127.0.0.1, then ``wormhole send`` and
    ``wormhole receive``; stop the servers by pid. Returns what happened (the parent checks the copy)."""
    work = spec["dir"]
    procs = []
    logs = {}

    def start(label, command):
        logs[label] = os.path.join(work, label + ".log")
        with open(logs[label], "wb") as log:
            proc = subprocess.Popen(command, cwd=work, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, preexec_fn=pdeathsig)
        procs.append(proc)
        return proc

    out = {"mode": spec["mode"]}
    try:
        if spec["mode"] == "netns":
            subprocess.run([ip_command(), "link", "set", "lo", "up"], check=True, timeout=20)
        mailbox_port = free_port()
        mailbox = start("mailbox", [os.path.join(BIN, "twist"), "wormhole-mailbox",
                                    "--port", "tcp:%d:interface=127.0.0.1" % mailbox_port,
                                    "--channel-db", os.path.join(work, "mailbox.sqlite")])
        wait_port(mailbox_port, mailbox, 30, "the mailbox server")
        transit_port = free_port()
        if spec["mode"] == "relay":
            relay = start("transit-relay", [os.path.join(BIN, "twist"), "transitrelay",
                                            "--port", "tcp:%d:interface=127.0.0.1" % transit_port])
            wait_port(transit_port, relay, 30, "the transit relay")
        # In "netns" mode nothing listens on transit_port: the relay is refused at once and the transfer goes
        # over the direct connection (loopback being the namespace's only interface).
        common = [os.path.join(BIN, "wormhole"), "--relay-url", "ws://127.0.0.1:%d/v1" % mailbox_port,
                  "--transit-helper", "tcp:127.0.0.1:%d" % transit_port]
        listen = ["--no-listen"] if spec["mode"] == "relay" else []
        send_cmd = common + ["--dump-timing", os.path.join(work, "send-timing.json"), "send", "--code",
                             WORMHOLE_CODE, "--hide-progress", "--no-qr"] + listen + [spec["source"]]
        receive_cmd = common + ["--dump-timing", os.path.join(work, "receive-timing.json"), "receive",
                                "--accept-file", "--hide-progress", "-o", spec["output"]] + listen + [WORMHOLE_CODE]
        out["commands"] = {"mailbox": mailbox.args, "send": send_cmd, "receive": receive_cmd}
        if spec["mode"] == "relay":
            out["commands"]["transit_relay"] = relay.args
        settle()
        began = time.perf_counter()
        sender = start("send", send_cmd)
        receiver = start("receive", receive_cmd)
        out["receive_peak_rss_mb"] = wait_rusage(receiver, spec["timeout"])
        out["seconds"] = round(time.perf_counter() - began, 4)
        out["send_peak_rss_mb"] = wait_rusage(sender, 60)
        out["receive_status"], out["send_status"] = receiver.returncode, sender.returncode
        out["rx_file_seconds"] = timing_span(os.path.join(work, "receive-timing.json"), "rx file")
        out["tx_file_seconds"] = timing_span(os.path.join(work, "send-timing.json"), "tx file")
        receive_log = tail(logs["receive"])
        hop = re.search(r"Receiving \((->|<-)?([^)]*)\)", receive_log)
        out["connection"] = hop.group(2) if hop else None
        if receiver.returncode or sender.returncode:
            out["error"] = "wormhole receive exited %s, send %s" % (receiver.returncode, sender.returncode)
            out["logs"] = {label: tail(path) for label, path in logs.items()}
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        out["error"] = "%s: %s" % (type(e).__name__, e)
        out["logs"] = {label: tail(path) for label, path in logs.items()}
    finally:
        for proc in reversed(procs):
            if proc.returncode is None:
                stop_pid(proc)
    return out


def wormhole_copy(mode, source, output, size, work) -> dict:
    """One magic-wormhole transfer through :func:`wormhole_driver` in a child process (under ``unshare --net``
    in "netns" mode); the driver's report."""
    os.makedirs(work, exist_ok=True)
    spec = {"mode": mode, "source": str(source), "output": str(output), "dir": str(work),
            "timeout": 120 + size / (2 * MB)}
    command = [sys.executable, str(HERE / "file_bench.py"), "--wormhole-driver", json.dumps(spec)]
    if mode == "netns":
        command = ["unshare", "--net", "--"] + command  # unshare execs the driver: same pid
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=pdeathsig)
    try:
        out, err = proc.communicate(timeout=spec["timeout"] + 120)
    except subprocess.TimeoutExpired:
        raise BenchError("the magic-wormhole driver did not finish in time") from None
    finally:
        stop_pid(proc)
        proc.stderr.close()
    try:
        report = json.loads(out)
    except ValueError:
        raise BenchError("the magic-wormhole driver failed (%s): %s" % (
            proc.returncode, err.decode(errors="replace")[-2000:])) from None
    if report.get("error"):
        raise BenchError("magic-wormhole (%s mode): %s\n%s" % (mode, report["error"], "\n".join(
            "--- %s:\n%s" % item for item in report.get("logs", {}).items())))
    return report


# p2pd


class ControlClient:
    """A control-socket connection for ``send``: skips progress lines, returns the final reply."""

    def __init__(self, path):
        self.path = str(path)
        self.next_id = 0

    def request(self, cmd, deadline_s, **args):
        """(final reply, number of progress lines); BenchError on timeout or a closed socket."""
        self.next_id += 1
        rid = self.next_id
        line = json.dumps(dict(args, id=rid, cmd=cmd)).encode() + b"\n"
        deadline = time.monotonic() + deadline_s
        progress = 0
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(self.path)
            s.sendall(line)
            buf = b""
            while True:
                while b"\n" not in buf:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise BenchError("no final reply to %r within %d s (%d progress lines)" % (
                            cmd, deadline_s, progress))
                    s.settimeout(left)
                    try:
                        chunk = s.recv(65536)
                    except socket.timeout:
                        continue
                    if not chunk:
                        raise BenchError("alice's control socket closed before the final reply to %r" % cmd)
                    buf += chunk
                raw, buf = buf.split(b"\n", 1)
                reply = json.loads(raw)
                if reply.get("id") != rid:
                    continue
                if "ok" in reply:
                    return reply, progress
                progress += 1


class Daemons:
    """A registry and two peer daemons; :meth:`close` stops all of them by pid."""

    def __init__(self, tmp, progress):
        self.tmp = pathlib.Path(tmp)
        self.progress = progress
        self.registry = self.alice = self.bob = None

    def start(self):
        self.progress("p2pd: starting a registry and two peer daemons (alice, bob with --accept auto)")
        self.registry, self.alice, self.bob = procs.start_pair(self.tmp, bob_args=["--accept", "auto"])
        try:
            reply = self.alice.ctl("msg", to="bob", text="file benchmark: warming up the link", wait=30)
        except (OSError, RuntimeError) as e:
            raise BenchError("warm-up message failed: %s" % e) from None
        if reply.get("status") != "delivered":
            raise BenchError("the warm-up message was not delivered: %r" % (reply,))

    def close(self):
        for proc in (self.alice, self.bob, self.registry):
            if proc is not None:
                proc.stop()
        self.alice = self.bob = self.registry = None

    def pids(self):
        return {"alice": self.alice.pid, "bob": self.bob.pid}

    def received_path(self, result, source):
        inbox = pathlib.Path(self.bob.data_dir) / "inbox"
        saved = result.get("saved") or []
        if saved and isinstance(saved[0], str):
            return str(inbox / saved[0])  # relative to the inbox (an absolute path stays as it is)
        stem, ext = os.path.splitext(os.path.basename(source))
        candidates = [inbox / (stem + ext)] + [inbox / ("%s (%d)%s" % (stem, n, ext)) for n in range(1, 100)]
        existing = [p for p in candidates if p.exists()]
        return str(existing[-1]) if existing else str(candidates[0])

    def send(self, source, size) -> dict:
        """One ``send`` of *source* to bob: timing, the daemon's result and memory/CPU during it."""
        client = ControlClient(self.alice.control_path)
        settle()
        sampler = MemorySampler(self.pids()).start()
        meter = CPUMeter(dict(self.pids(), registry=self.registry.pid)).start()
        began = time.perf_counter()
        try:
            reply, progress = client.request("send", 120 + size / MB, to="bob", paths=[str(source)])
        finally:
            seconds = time.perf_counter() - began
            cpu = meter.stop()
            peak = sampler.stop()
        if not reply.get("ok"):
            raise BenchError("alice answered the send request with an error: %s: %s" % (
                reply.get("error"), reply.get("message")))
        result = reply.get("result") or {}
        run = {"seconds": round(seconds, 4), "rate": round(size / seconds / MB, 1), "status": result.get("status"),
               "bytes": result.get("bytes"), "tid": result.get("tid"), "progress_lines": progress,
               "hash_seconds": result.get("hash_seconds"),
               "peak_rss_mb": peak, "cpu_percent": {k: v for k, v in cpu.items() if k in ("alice", "bob", "other")},
               "result": result}
        transfer = transfer_seconds(result, seconds)
        if transfer:
            run["transfer_seconds"] = round(transfer, 4)
            run["transfer_rate"] = round(size / transfer / MB, 1)
        return run

    def peak_memory(self) -> dict:
        """VmHWM of each daemon (MB): its peak resident memory since it started."""
        out = {}
        for label, pid in self.pids().items():
            kb = procs.proc_status_kb(pid, "VmHWM")
            out[label] = None if kb is None else round(kb * 1024 / MB, 1)
        return out


def transfer_seconds(result, total):
    """The transfer alone: the daemon's ``seconds`` (its data connection, from the first byte to the verified
    end), else our total minus its ``hash_seconds``; None when the result has neither."""
    def number(key):
        value = result.get(key)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    seconds, hashing = number("seconds"), number("hash_seconds")
    if seconds is not None and seconds > 0:
        return seconds
    if hashing is not None and total > hashing:
        return total - hashing
    return None


# the run


class Bench:
    def __init__(self, args, progress):
        self.args = args
        self.progress = progress
        parent = args.tmpdir or None
        self.tmp = pathlib.Path(tempfile.mkdtemp(prefix="p2pd-file-bench-", dir=parent))
        self.source = self.tmp / ("bench-%s.bin" % re.sub(r"\W", "", human_size(args.size)))
        self.daemons = None
        self.digest = None

    def close(self):
        if self.daemons is not None:
            self.daemons.close()
            self.daemons = None
        if self.args.keep:
            self.progress("kept %s" % self.tmp)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def prepare(self) -> dict:
        reclaim = memory_reclaim()
        if reclaim:
            self.progress("this machine gives freed memory back to its host (%s): timings vary from run to run, "
                          "compare medians (see memory_reclaim)" % ", ".join(reclaim))
        size = self.args.size
        free = shutil.disk_usage(self.tmp).free
        if free < 3 * size + (256 << 20):  # the file, the p2pd warm-up's file and its copy
            raise BenchError("%s has %s free; the file and two more of its size need %s" % (
                self.tmp, human_size(free), human_size(3 * size + (256 << 20))))
        self.progress("writing %s of random bytes to %s" % (human_size(size), self.source))
        began = time.perf_counter()
        self.digest = write_random_file(self.source, size)
        return {"path": str(self.source), "bytes": size, "sha256": self.digest,
                "write_seconds": round(time.perf_counter() - began, 3), "filesystem": filesystem(self.tmp),
                "memory_reclaim": reclaim}

    def check(self, run, path):
        run.update(verify(path, self.args.size, self.digest))
        try:
            os.unlink(path)  # room for the next copy, and no name clash in bob's inbox
        except OSError:
            pass
        if not run["verified"]:
            self.progress("  the copy at %s is NOT the file that was sent" % path)
        return run

    def socket_rows(self):
        # One unmeasured copy first: the very first write of a GiB into fresh page cache is several times slower
        # on a VM (guest memory touched for the first time); the copies after it, of every method, reuse it.
        output = self.tmp / "warm-up.bin"
        warm = socket_copy(self.source, output, self.args.size)
        os.unlink(output)
        self.progress("(a) warm-up copy, not counted: %.2f s" % warm["seconds"])
        runs = []
        for n in range(self.args.runs):
            output = self.tmp / ("socket-copy-%d.bin" % n)
            run = socket_copy(self.source, output, self.args.size)
            self.progress("(a) socket copy %d/%d: %.2f s, %.0f MB/s" % (n + 1, self.args.runs, run["seconds"],
                                                                         run["rate"]))
            runs.append(self.check(run, output))
        return dict(summary(runs, self.args.size), runs=runs, warm_up_seconds=warm["seconds"])

    def p2pd_rows(self):
        self.daemons = Daemons(self.tmp, self.progress)
        self.daemons.start()
        # One unmeasured send first, as the socket copy has its warm-up copy: of another file (random bytes too),
        # so alice's hash cache does not spare the measured runs anything.
        warm_source = self.tmp / "warm-up-source.bin"
        write_random_file(warm_source, self.args.size)
        warm = self.daemons.send(warm_source, self.args.size)
        for leftover in (warm_source, self.daemons.received_path(warm["result"], warm_source)):
            try:
                os.unlink(leftover)
            except OSError:
                pass
        self.progress("p2pd warm-up send of another file, not counted: %.2f s" % warm["seconds"])
        runs = []
        for n in range(self.args.runs):
            self.progress("p2pd send %d/%d: alice -> bob" % (n + 1, self.args.runs))
            run = self.daemons.send(self.source, self.args.size)
            path = self.daemons.received_path(run["result"], self.source)
            run["saved"] = path
            self.progress("  %.2f s, %.0f MB/s%s, status %s; peak RSS alice %s / bob %s MB" % (
                run["seconds"], run["rate"], ", transfer alone %.0f MB/s" % run["transfer_rate"]
                if "transfer_rate" in run else "", run["status"], run["peak_rss_mb"]["alice"],
                run["peak_rss_mb"]["bob"]))
            runs.append(self.check(run, path))
        row = dict(summary(runs, self.args.size), runs=runs)
        row["memory"] = {"hwm_mb": self.daemons.peak_memory(), "sampled_max_rss_mb": {
            label: max(r["peak_rss_mb"][label] for r in runs) for label in ("alice", "bob")}}
        if all("transfer_seconds" in r for r in runs):
            row["transfer"] = summary([{"seconds": r["transfer_seconds"]} for r in runs], self.args.size)
        self.daemons.close()
        self.daemons = None
        return row

    def wormhole_rows(self, mode):
        runs = []
        for n in range(self.args.runs):
            output = self.tmp / ("wormhole-copy-%d.bin" % n)
            run = wormhole_copy(mode, self.source, output, self.args.size, self.tmp / ("wormhole-%d" % n))
            run["rate"] = round(self.args.size / run["seconds"] / MB, 1)
            self.progress("(b) magic-wormhole %d/%d (%s): %.2f s, %.0f MB/s (transfer alone %s s)" % (
                n + 1, self.args.runs, mode, run["seconds"], run["rate"], run.get("rx_file_seconds")))
            runs.append(self.check(run, output))
        row = dict(summary(runs, self.args.size), runs=runs, mode=mode, commands=runs[0]["commands"])
        if all(r.get("rx_file_seconds") for r in runs):
            row["transfer"] = summary([{"seconds": r["rx_file_seconds"]} for r in runs], self.args.size)
        return row

    def run(self):
        args = self.args
        report = {"load_average": [round(x, 2) for x in os.getloadavg()], "source": self.prepare(), "rows": {},
                  "skipped": {}}
        rows = report["rows"]
        self.progress("(a) socket copy: sendfile -> recv_into -> write, %d run(s)" % args.runs)
        rows["socket"] = self.socket_rows()
        if not args.no_p2pd:
            rows["p2pd"] = self.p2pd_rows()
        if args.no_wormhole:
            report["skipped"]["wormhole"] = "--no-wormhole"
        elif wormhole_available():
            report["skipped"]["wormhole"] = wormhole_available()
            self.progress(report["skipped"]["wormhole"])
        else:
            mode = args.wormhole_mode
            if mode == "auto":
                mode = "netns" if netns_works() else "relay"
                if mode == "relay":
                    self.progress("unshare --net is not possible here: magic-wormhole runs with --no-listen and "
                                  "a transit relay on 127.0.0.1")
            if mode == "relay" and importlib.util.find_spec("wormhole_transit_relay") is None:
                report["skipped"]["wormhole"] = ("no network namespace and magic-wormhole-transit-relay is not "
                                                 "installed: skipping (b)")
                self.progress(report["skipped"]["wormhole"])
            else:
                self.progress("(b) magic-wormhole through a local mailbox server (%s), %d run(s)" % (
                    "in a loopback-only network namespace" if mode == "netns" else "--no-listen, local transit "
                    "relay", args.runs))
                rows["wormhole"] = self.wormhole_rows(mode)
        return report


def filesystem(path):
    """Device and type of the filesystem holding *path*, from /proc/self/mounts (longest matching mount)."""
    path = os.path.realpath(path)
    best = ("?", "?", "")
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                device, mount, fstype = line.split()[:3]
                if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best[2]):
                    best = (device, fstype, mount)
    except OSError:
        pass
    return "%s (%s)" % best[:2]


def revision() -> str:
    return procs.revision(str(HERE.parent))


# verdict and output


def checks(report):
    rows = report["rows"]
    out = []
    socket_rate = rows["socket"]["median_rate"]
    p2pd = rows.get("p2pd")
    wormhole = rows.get("wormhole")
    if p2pd:
        share = p2pd["median_rate"] / socket_rate
        out.append({"check": "p2pd >= %d%% of socket copy (a)" % (100 * SOCKET_TARGET), "value": "%.1f%%" % (
            100 * share), "pass": share >= SOCKET_TARGET})
        if wormhole:
            times = p2pd["median_rate"] / wormhole["median_rate"]
            out.append({"check": "p2pd >= %gx magic-wormhole (b)" % WORMHOLE_TARGET, "value": "%.2fx" % times,
                        "pass": times >= WORMHOLE_TARGET})
        else:
            out.append({"check": "p2pd >= %gx magic-wormhole (b)" % WORMHOLE_TARGET, "value": "not run",
                        "pass": None})
        hwm = p2pd["memory"]["hwm_mb"]
        known = [v for v in hwm.values() if v is not None]
        out.append({"check": "each daemon's peak RSS < %g MB" % RSS_TARGET_MB,
                    "value": "alice %s / bob %s MB" % (fmt(hwm["alice"], "%.0f"), fmt(hwm["bob"], "%.0f")),
                    "pass": len(known) == 2 and max(known) < RSS_TARGET_MB})
    runs = [r for row in rows.values() for r in row["runs"]]
    intact = sum(1 for r in runs if r["verified"])
    done = all(r.get("status") == "done" for r in (p2pd or {}).get("runs", []))
    out.append({"check": "every copy intact (size, SHA-256)", "value": "%d/%d" % (intact, len(runs)),
                "pass": intact == len(runs) and done})
    return out


def fmt(value, pattern):
    return "-" if value is None else pattern % value


def table(report) -> str:
    cfg, rows = report["config"], report["rows"]
    src = report["source"]
    socket_rate = rows["socket"]["median_rate"]
    wormhole_rate = rows["wormhole"]["median_rate"] if "wormhole" in rows else None
    lines = [
        "p2pd file benchmark: one file of %s (%d bytes), %d run(s) per method, copies verified with SHA-256 "
        "after each timing" % (human_size(cfg["size"]), cfg["size"], cfg["runs"]),
        "p2pd at %s; %d CPU cores, load average %s at the start; files in %s on %s; MB = 10^6 bytes" % (
            report["revision"], report["cores"], "/".join("%.2f" % x for x in report["load_average"]),
            report["dir"], src["filesystem"]),
    ]
    if src.get("memory_reclaim"):
        lines.append("freed memory goes back to the host here (%s): runs vary, the targets use medians"
                     % ", ".join(src["memory_reclaim"]))
    lines += [
        "",
        "%-44s %8s %8s %9s %9s %8s %7s  %-17s %8s" % ("method", "best s", "med s", "best MB/s", "med MB/s",
                                                      "% of (a)", "x (b)", "peak RSS MB", "verify s"),
    ]

    def line(label, row, rss="-", verify_s=None):
        rate = row["median_rate"]
        lines.append("%-44s %8.2f %8.2f %9.1f %9.1f %8s %7s  %-17s %8s" % (
            label, row["best_seconds"], row["median_seconds"], row["best_rate"], rate,
            fmt(100.0 * rate / socket_rate, "%.1f%%"), fmt(rate / wormhole_rate if wormhole_rate else None,
                                                           "%.2fx"), rss, fmt(verify_s, "%.2f")))

    def verify_time(row):
        return statistics.median([r.get("verify_seconds", 0.0) for r in row["runs"]])

    line("(a) socket copy: sendfile -> recv_into+write", rows["socket"], verify_s=verify_time(rows["socket"]))
    if "wormhole" in rows:
        w = rows["wormhole"]
        rss = "send %.0f / recv %.0f" % (max(r["send_peak_rss_mb"] for r in w["runs"]),
                                         max(r["receive_peak_rss_mb"] for r in w["runs"]))
        line("(b) magic-wormhole CLI (%s)" % w["mode"], w, rss, verify_time(w))
        if "transfer" in w:
            line("    its transfer alone ('rx file')", w["transfer"])
    if "p2pd" in rows:
        p = rows["p2pd"]
        hwm = p["memory"]["hwm_mb"]
        line("p2pd alice -> bob (send request -> reply)", p,
             "alice %s / bob %s" % (fmt(hwm["alice"], "%.0f"), fmt(hwm["bob"], "%.0f")), verify_time(p))
        if "transfer" in p:
            line("    its transfer alone (daemon's figures)", p["transfer"])
    lines.append("(times exclude hash verification, shown as 'verify s'; p2pd's include alice hashing the file "
                 "for the offer; magic-wormhole's include both CLIs starting)")
    for label, reason in report["skipped"].items():
        lines.append("skipped %s: %s" % (label, reason))
    if "p2pd" in rows:
        p = rows["p2pd"]
        sampled = p["memory"]["sampled_max_rss_mb"]
        cpu = p["runs"][-1]["cpu_percent"]
        lines.append("p2pd: peak RSS is VmHWM at the end; max VmRSS sampled every %.1f s during transfers alice %s"
                     " / bob %s MB; CPU %% of a core in the last run alice %s, bob %s, other %s" % (
                         SAMPLE_EVERY, sampled["alice"], sampled["bob"], fmt(cpu.get("alice"), "%.0f"),
                         fmt(cpu.get("bob"), "%.0f"), fmt(cpu.get("other"), "%.0f")))
        lines.append("p2pd: alice hashing the file for the offer took %s s (per run; she caches the hash, so later "
                     "runs skip it); %s progress lines; status %s" % (
                         " / ".join(fmt(r.get("hash_seconds"), "%.2f") for r in p["runs"]),
                         " / ".join(str(r["progress_lines"]) for r in p["runs"]),
                         ", ".join(sorted({str(r["status"]) for r in p["runs"]}))))
    if "wormhole" in rows:
        w = rows["wormhole"]
        lines.append("magic-wormhole connection: %s" % ", ".join(sorted({str(r.get("connection"))
                                                                          for r in w["runs"]})))
        for name in ("mailbox", "transit_relay", "send", "receive"):
            if name in w["commands"]:
                lines.append("  %s: %s" % (name, " ".join(w["commands"][name])))
    lines += procs.verdict_lines(report, "targets (median times):", (38, 20))
    return "\n".join(lines)


def notes(report):
    out = []
    p2pd = report["rows"].get("p2pd")
    if p2pd:
        if "transfer" not in p2pd:
            out.append("alice's send result gave no seconds/hash_seconds: no transfer-only figure for p2pd")
        else:
            share = p2pd["transfer"]["median_rate"] / report["rows"]["socket"]["median_rate"]
            out.append("p2pd's transfer alone runs at %.1f%% of the socket copy" % (100 * share))
        for r in p2pd["runs"]:
            if r["status"] != "done":
                out.append("a p2pd send ended with status %r: %r" % (r["status"], r["result"]))
            if r["bytes"] not in (None, report["config"]["size"]):
                out.append("a p2pd send reported %r bytes" % r["bytes"])
        other = p2pd["runs"][-1]["cpu_percent"].get("other")
        if other is not None and other > 25:
            out.append("%.0f%% of a core went to other processes during the last p2pd run: figures may be low"
                       % other)
    return out


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--size", type=parse_size, default=1 << 30, help="file size: bytes, or with K/M/G (binary), default 1G")
    add("--runs", type=int, default=5, help="runs per method (1-20, default 5); best and median are reported")
    add("--no-wormhole", action="store_true", help="skip (b), magic-wormhole")
    add("--no-p2pd", action="store_true", help="skip the daemons (the baselines alone)")
    add("--wormhole-mode", choices=("auto", "netns", "relay"), default="auto",
        help="netns: in a loopback-only network namespace (unshare --net); relay: --no-listen and a local "
             "transit relay; auto (default): netns when possible")
    add("--tmpdir", help="where to make the temporary directory (default: the system's)")
    add("--json", action="store_true", help="print one JSON document instead of the table")
    add("--strict", action="store_true", help="exit 1 when a target fails")
    add("--keep", action="store_true", help="keep the temporary directory (the source file, daemon data, logs)")
    args = parser.parse_args(argv)
    if not 1 <= args.runs <= 20:
        parser.error("--runs must be from 1 to 20")
    if not 1024 <= args.size <= 1 << 40:
        parser.error("--size must be from 1K to 1T")
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--wormhole-driver"]:  # internal: one magic-wormhole transfer (see wormhole_copy)
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
        print(json.dumps(wormhole_driver(json.loads(argv[1]))))
        return 0
    args = parse_args(argv)

    procs.exit_on_signals()
    bench, report = procs.run("file_bench", lambda progress: Bench(args, progress))
    report.update({
        "config": {"size": args.size, "runs": args.runs, "wormhole": "wormhole" in report["rows"]},
        "cores": os.cpu_count(),
        "revision": revision(),
        "dir": str(bench.tmp),
        "targets": {"socket_share": SOCKET_TARGET, "wormhole_times": WORMHOLE_TARGET, "rss_mb": RSS_TARGET_MB},
    })
    return procs.verdict(report, checks, notes, args, table)


if __name__ == "__main__":
    sys.exit(main())
