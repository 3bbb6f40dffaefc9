"""Chat throughput and round-trip latency between two peer daemons, side by side with a plain Twisted line echo.

    .venv/bin/python benchmarks/chat_bench.py [--messages 20000] [--window 256] [--rtt-samples 2000] [--json]

One run starts, on 127.0.0.1, a registry (embedded Redis) and two real peer daemons, ``alice`` and ``bob``
(``twistd -n p2pd --role=peer``, :mod:`tests.peer_process`), warms up their link, then talks to alice's control
socket from this process:

- throughput: ``--messages`` ``msg`` requests to bob with ``--window`` of them in flight on one control
  connection. Each reply comes after alice stored and committed the message, sent it over the TLS link, bob
  stored and committed it and acknowledged it, and alice marked it delivered. The rate counts replies with
  status ``delivered``; afterwards bob's store must hold every one of them and its ``history`` end with them.
- round trip: ``--rtt-samples`` requests one at a time, each timed from writing the request to reading its
  ``delivered`` reply.

The baseline, in the same run, is ``benchmarks/line_echo.py``: two plain Twisted processes, one echoing the
lines the other sends over TCP on loopback, with the same count, window and samples, and lines as long as the
link's message frames; then the same over TLS 1.3 with the peer links' settings. It prints a table with
PASS/FAIL against the targets (at least 10,000 delivered messages per second, p99 round trip under 5 ms).
Every process it starts is stopped by its pid on exit, error or Ctrl-C.

Exit status: 0 when the benchmark ran (whatever the verdict; 1 with ``--strict`` when a target failed),
2 when it could not run, 130 when interrupted.
"""

import argparse
import json
import os
import pathlib
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from line_echo import CPUMeter, latency_summary  # noqa: E402  (benchmarks/ is the script's dir)
import procs  # noqa: E402
from procs import stop_pid  # noqa: E402

from p2pd.core import wire  # noqa: E402

RATE_TARGET = 10000.0  # delivered messages per second, at least
P99_TARGET_MS = 5.0    # round trip, one message at a time
WAIT = 60              # seconds a msg request may wait for its acknowledgement before it answers "queued"
REPLY_TIMEOUT = 120    # seconds without any reply before the run is declared stuck


BenchError = procs.BenchError


class ControlClient:
    """One connection to a daemon's control socket, with pipelined ``msg`` requests."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(REPLY_TIMEOUT)
        self.sock.connect(str(path))
        self.buf = b""
        self.next_id = 1

    def close(self):
        self.sock.close()

    def requests(self, to, texts) -> tuple[int, list[bytes]]:
        """Encoded ``msg`` request lines for *texts*, with consecutive ids; (first id, lines)."""
        first = self.next_id
        self.next_id += len(texts)
        return first, [json.dumps({"id": first + i, "cmd": "msg", "to": to, "text": text, "wait": WAIT},
                                  separators=(",", ":")).encode() + b"\n" for i, text in enumerate(texts)]

    def pipeline(self, first, lines, window, now=time.perf_counter) -> dict:
        """Send *lines* keeping *window* requests unanswered; every reply and the time each one took."""
        n = len(lines)
        sent_at, replies, latencies = [0.0] * n, [None] * n, [0.0] * n
        began = now()
        queued = min(window, n)
        for i in range(queued):
            sent_at[i] = began
        self.sock.sendall(b"".join(lines[:queued]))
        answered = 0
        while answered < n:
            try:
                data = self.sock.recv(1 << 18)
            except socket.timeout:
                raise BenchError("no control reply for %d s (%d of %d answered)" % (REPLY_TIMEOUT, answered, n))
            if not data:
                raise BenchError("the control socket closed (%d of %d answered)" % (answered, n))
            arrived = now()
            *complete, self.buf = (self.buf + data).split(b"\n")
            more = 0
            for line in complete:
                reply = json.loads(line)
                i = reply["id"] - first if isinstance(reply.get("id"), int) else -1
                if not 0 <= i < n or replies[i] is not None:
                    raise BenchError("unexpected control reply %r" % line[:200])
                replies[i] = reply
                latencies[i] = arrived - sent_at[i]
                answered += 1
                if queued + more < n:
                    more += 1
            if more:
                stamp = now()
                for i in range(queued, queued + more):
                    sent_at[i] = stamp
                self.sock.sendall(b"".join(lines[queued:queued + more]))
                queued += more
        return {"replies": replies, "latencies": latencies, "seconds": now() - began}


def texts(start, count, size):
    """*count* distinct message bodies of *size* bytes."""
    out = []
    for n in range(start, start + count):
        head = "bench %09d " % n
        out.append(head + "." * max(0, size - len(head)))
    return out


def frame_bytes(size) -> int:
    """Bytes of a peer-link msg frame (newline included) carrying a *size*-byte body."""
    frame = {"t": "msg", "id": "0" * 32, "from": "alice", "seq": 12345, "ts": 1_700_000_000_000,
             "body": texts(0, 1, size)[0]}
    return len(wire.encode(frame)) + 1


class Bench:
    """The processes of one run; :meth:`close` stops all of them by pid."""

    def __init__(self, args, progress):
        self.args = args
        self.progress = progress
        self.tmp = pathlib.Path(tempfile.mkdtemp(prefix="p2pd-chat-bench-"))
        self.registry = self.alice = self.bob = None
        self.client = None
        self.counter = 0  # message bodies are numbered across the run
        self.sent_ids = []  # ids of every message alice sent to bob, in order

    def start(self):
        self.progress("starting a registry and two peer daemons (alice, bob)")
        self.registry, self.alice, self.bob = procs.start_pair(self.tmp)
        self.client = ControlClient(self.alice.control_path)

    def close(self):
        """Stop everything this run started (by pid) and remove its files; calling it again does nothing."""
        if self.client is not None:
            self.client.close()
            self.client = None
        for proc in (self.alice, self.bob, self.registry):
            if proc is not None:
                proc.stop()
        self.alice = self.bob = self.registry = None
        shutil.rmtree(self.tmp, ignore_errors=True)

    def cpu_meter(self):
        pids = {"alice": self.alice.pid, "bob": self.bob.pid, "client": os.getpid(), "registry": self.registry.pid}
        try:
            pids["redis"] = int((self.tmp / "registry" / "redis.pid").read_text().strip())
        except (OSError, ValueError):
            pass
        return CPUMeter(pids)

    def send(self, count, window):
        """Send *count* messages to bob, *window* in flight; the summary of the replies."""
        bodies = texts(self.counter, count, self.args.size)
        self.counter += count
        first, lines = self.client.requests("bob", bodies)
        meter = self.cpu_meter().start()
        result = self.client.pipeline(first, lines, window)
        cpu = meter.stop()
        statuses, errors = {}, []
        for reply in result["replies"]:
            if reply.get("ok"):
                status = reply["result"]["status"]
                statuses[status] = statuses.get(status, 0) + 1
                self.sent_ids.append(reply["result"]["id"])
            elif len(errors) < 5:
                errors.append("%s: %s" % (reply.get("error"), reply.get("message")))
        delivered = statuses.get("delivered", 0)
        seconds = result["seconds"]
        return dict(latency_summary(result["latencies"]), messages=count, window=window, delivered=delivered,
                    statuses=statuses, errors=errors, seconds=round(seconds, 4), rate=round(delivered / seconds, 1),
                    cpu_percent=cpu)

    def warm_up(self):
        self.progress("warming up the alice -> bob link")
        try:
            for _ in range(5):
                reply = self.alice.ctl("msg", to="bob", text="warm-up", wait=30)
                if reply["status"] != "delivered":
                    raise BenchError("a warm-up message was not delivered: %r" % (reply,))
                self.sent_ids.append(reply["id"])
        except (OSError, RuntimeError) as e:
            raise BenchError("warm-up failed: %s" % e) from None
        warm = self.send(min(2000, self.args.messages), self.args.window)
        if warm["delivered"] != warm["messages"]:
            raise BenchError("warm-up: only %d of %d delivered (%s)" % (warm["delivered"], warm["messages"],
                                                                         warm["errors"] or warm["statuses"]))

    def verify(self) -> dict:
        """What bob stored and alice still holds, read back after the run."""
        with sqlite3.connect("file:%s?mode=ro" % (self.bob.data_dir + "/p2pd.sqlite3"), uri=True) as db:
            stored = {row[0] for row in db.execute(
                "SELECT id FROM messages WHERE conversation = 'alice' AND direction = 'in'")}
        with sqlite3.connect("file:%s?mode=ro" % (self.alice.data_dir + "/p2pd.sqlite3"), uri=True) as db:
            outgoing = dict(db.execute(
                "SELECT status, count(*) FROM messages WHERE direction = 'out' GROUP BY status").fetchall())
        tail = self.bob.ctl("history", conversation="alice", limit=min(10000, len(self.sent_ids)))
        expected_tail = self.sent_ids[-len(tail):] if tail else []
        return {
            "sent": len(self.sent_ids),
            "bob_stored": len(stored),
            "missing_at_bob": len(set(self.sent_ids) - stored),
            "alice_statuses": outgoing,
            "alice_outbox": self.alice.ctl("status")["outbox"],
            "bob_history_checked": len(tail),
            "bob_history_in_order": [m["id"] for m in tail] == expected_tail,
        }

    def run(self):
        args = self.args
        self.start()
        self.warm_up()
        self.progress("throughput: %d messages, %d in flight" % (args.messages, args.window))
        throughput = self.send(args.messages, args.window)
        self.progress("  %.0f delivered/s" % throughput["rate"])
        self.progress("round trip: %d messages one at a time" % args.rtt_samples)
        rtt = self.send(args.rtt_samples, 1)
        rtt["samples"] = rtt.pop("messages")
        self.progress("  p50 %.3f ms, p99 %.3f ms" % (rtt["p50_ms"], rtt["p99_ms"]))
        verified = self.verify()
        return {"throughput": throughput, "rtt": rtt}, verified

    def line_echo(self, tls):
        args = self.args
        command = [sys.executable, str(HERE / "line_echo.py"), "--messages", str(args.messages),
                   "--window", str(args.window), "--rtt-samples", str(args.rtt_samples),
                   "--size", str(frame_bytes(args.size) - 1)] + (["--tls"] if tls else [])
        self.progress("baseline: plain Twisted line echo over %s" % ("TLS 1.3" if tls else "TCP"))
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            raise BenchError("line_echo.py did not finish in time") from None
        finally:
            stop_pid(proc)
        if proc.returncode != 0:
            raise BenchError("line_echo.py failed (%s): %s" % (proc.returncode, err.decode(errors="replace")[-2000:]))
        return json.loads(out)


def revision() -> str:
    return procs.revision(str(HERE.parent))


def checks(chat, verified):
    t, r = chat["throughput"], chat["rtt"]
    all_delivered = (t["delivered"] == t["messages"] and r["delivered"] == r["samples"]
                     and verified["missing_at_bob"] == 0 and verified["bob_stored"] == verified["sent"]
                     and verified["alice_outbox"] == 0 and verified["bob_history_in_order"])
    return [
        {"check": "delivered messages/s >= %d" % RATE_TARGET, "value": "%.0f/s" % t["rate"],
         "pass": t["rate"] >= RATE_TARGET},
        {"check": "round trip p99 < %g ms" % P99_TARGET_MS, "value": "%.2f ms" % r["p99_ms"],
         "pass": r["p99_ms"] < P99_TARGET_MS},
        {"check": "every message delivered and stored", "value": "%d/%d at bob" % (
            verified["sent"] - verified["missing_at_bob"], verified["sent"]), "pass": all_delivered},
    ]


def fmt(value, pattern):
    return "-" if value is None else pattern % value


def cpu_text(cpu):
    """The per-process figures that matter, then everything else on the machine."""
    shown = [k for k in cpu if k not in ("machine", "other", "registry", "redis")] + ["other"]
    return " ".join("%s %s" % (k, fmt(cpu.get(k), "%.0f")) for k in shown)


def table(report) -> str:
    cfg = report["config"]
    rows = [("p2pd alice -> bob", report["chat"])] + [
        ("line echo %s" % ("TLS 1.3" if key == "tls" else "TCP"), report["baseline"][key])
        for key in ("tcp", "tls") if key in report["baseline"]]
    echo_rate = report["baseline"]["tcp"]["throughput"]["rate"]
    lines = [
        "p2pd chat benchmark: %d messages of %d bytes with %d requests in flight, then %d round trips one at a "
        "time; link frames %d bytes" % (cfg["messages"], cfg["size"], cfg["window"], cfg["rtt_samples"],
                                         cfg["frame_bytes"]),
        "p2pd at %s; %d CPU cores shared by both daemons, the control client and the baselines; CPU in %% of "
        "one core" % (report["revision"], report["cores"]),
        "",
        "%-20s %10s %7s %9s %9s   %8s %8s %8s   %s" % ("row", "msgs/s", "% echo", "load p50", "load p99",
                                                  "rtt p50", "rtt p99", "rtt max", "CPU % during throughput"),
    ]
    for label, row in rows:
        t, r = row["throughput"], row["rtt"]
        lines.append("%-20s %10.0f %7s %9.2f %9.2f   %8.3f %8.3f %8.3f   %s" % (
            label, t["rate"], fmt(100.0 * t["rate"] / echo_rate if echo_rate else None, "%.1f%%"), t["p50_ms"],
            t["p99_ms"], r["p50_ms"], r["p99_ms"], r["max_ms"], cpu_text(t["cpu_percent"])))
    lines.append("(latencies in ms; load = while %d are in flight, rtt = one at a time)" % cfg["window"])
    v = report["verified"]
    lines.append("verified: %d sent, %d stored at bob (%d missing), bob's history's last %d in order: %s; "
                 "alice statuses %s, outbox %d" % (v["sent"], v["bob_stored"], v["missing_at_bob"],
                                                    v["bob_history_checked"], v["bob_history_in_order"],
                                                    v["alice_statuses"], v["alice_outbox"]))
    lines += ["", "targets:"]
    for check in report["checks"]:
        lines.append("  %-36s %-14s %s" % (check["check"], check["value"], "PASS" if check["pass"] else "FAIL"))
    lines.append("result: %s" % ("PASS" if report["pass"] else "FAIL"))
    for note in report["notes"]:
        lines.append("note: " + note)
    return "\n".join(lines)


def notes(chat):
    out = []
    for phase in ("throughput", "rtt"):
        row = chat[phase]
        if row["errors"]:
            out.append("%s: error replies, e.g. %s" % (phase, "; ".join(row["errors"])))
        others = {k: v for k, v in row["statuses"].items() if k != "delivered"}
        if others:
            out.append("%s: replies not delivered: %s" % (phase, others))
    cpu = chat["throughput"]["cpu_percent"]
    for phase in ("throughput", "rtt"):
        other = chat[phase]["cpu_percent"].get("other")
        if other is not None and other > 25:
            out.append("%.0f%% of a core went to other processes during the %s run: figures may be low"
                       % (other, phase))
    if cpu.get("client") is not None and cpu["client"] > 70:
        out.append("the control client used %.0f%% of a core: it may be part of what limits the rate" % cpu["client"])
    return out


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--messages", type=int, default=20000, help="messages for the throughput run (1-1000000, default 20000)")
    add("--window", type=int, default=256, help="control requests in flight (1-10000, default 256)")
    add("--rtt-samples", type=int, default=2000, help="messages sent one at a time (1-100000, default 2000)")
    add("--size", type=int, default=64, help="bytes of text per message (16-16384, default 64)")
    add("--no-tls-baseline", action="store_true", help="skip the TLS line echo")
    add("--json", action="store_true", help="print one JSON document instead of the table")
    add("--strict", action="store_true", help="exit 1 when a target fails")
    args = parser.parse_args(argv)
    for name, low, high in (("messages", 1, 10**6), ("window", 1, 10000), ("rtt_samples", 1, 100000),
                            ("size", 16, wire.MAX_BODY)):
        if not low <= getattr(args, name) <= high:
            parser.error("--%s must be from %d to %d" % (name.replace("_", "-"), low, high))
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)

    procs.exit_on_signals()
    progress = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    bench = Bench(args, progress)
    try:
        chat, verified = bench.run()
        bench.close()  # the daemons are done: the baselines get the machine to themselves
        baseline = {"tcp": bench.line_echo(tls=False)}
        if not args.no_tls_baseline:
            baseline["tls"] = bench.line_echo(tls=True)
    except BenchError as e:
        print("chat_bench: %s" % e, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("chat_bench: interrupted", file=sys.stderr)
        return 130
    finally:
        bench.close()
    report = {
        "config": {"messages": args.messages, "window": args.window, "rtt_samples": args.rtt_samples,
                   "size": args.size, "frame_bytes": frame_bytes(args.size)},
        "cores": os.cpu_count(),
        "revision": revision(),
        "chat": chat,
        "baseline": baseline,
        "verified": verified,
        "targets": {"rate": RATE_TARGET, "rtt_p99_ms": P99_TARGET_MS},
    }
    report["checks"] = checks(chat, verified)
    report["pass"] = all(c["pass"] for c in report["checks"])
    report["notes"] = notes(chat)
    print(json.dumps(report, indent=2) if args.json else table(report))
    return 1 if args.strict and not report["pass"] else 0


if __name__ == "__main__":
    sys.exit(main())
