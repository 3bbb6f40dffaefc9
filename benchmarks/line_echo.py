"""The chat benchmark's baseline: a plain Twisted line echo between two processes on loopback.

    .venv/bin/python benchmarks/line_echo.py [--messages 20000] [--window 256] [--rtt-samples 2000] [--tls]
    .venv/bin/python benchmarks/line_echo.py --serve [--tls-dir DIR]     # the echo side alone; prints its port

The sending process starts the echo process (``--serve``: a ``LineReceiver`` that writes every line back),
connects to it over TCP on 127.0.0.1 and, after a warm-up, measures two things on that one connection:

- throughput: ``--messages`` lines with ``--window`` of them in flight (each echo lets the next line go), the
  rate of echoed lines per second;
- round trip: ``--rtt-samples`` lines one at a time, each timed from ``transport.write`` to its echo arriving.

Both sides run the default reactor, the one ``twistd`` gives the peer daemons. With ``--tls`` the connection is
TLS 1.3 with the peer daemons' own settings (:mod:`p2pd.peer.identity`: Ed25519 certificates both ways, wrapped
the way peer links are). Every echo is checked against the line that was sent. It prints one JSON document on
stdout (a short summary with ``--text``) and stops the echo process by its pid; the echo process also exits
by itself when the process that started it goes away.
"""

import argparse
import collections
import json
import math
import os
import select
import subprocess
import sys
import tempfile
import time

from twisted.internet import defer, endpoints, protocol, task
from twisted.protocols.basic import LineReceiver

import procs  # noqa: E402
from procs import stop_pid  # benchmarks/ is on sys.path as the script's directory

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

CLK_TCK = os.sysconf("SC_CLK_TCK")
WARMUP_LINES = 2000


# measuring


def percentile(ordered, q):
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def latency_summary(latencies_s) -> dict:
    """p50, p99, max and mean of latencies in seconds, as milliseconds."""
    ordered = sorted(latencies_s)
    ms = lambda s: None if s is None else round(s * 1000.0, 3)  # noqa: E731
    return {"p50_ms": ms(percentile(ordered, 0.50)), "p99_ms": ms(percentile(ordered, 0.99)),
            "max_ms": ms(ordered[-1] if ordered else None),
            "mean_ms": ms(sum(ordered) / len(ordered) if ordered else None)}


def cpu_seconds(pid):
    """CPU seconds used so far by all threads of process *pid* (None if it is gone).

    From the nanosecond counters of ``/proc/PID/task/*/schedstat`` where the kernel has them, else from the
    clock ticks of ``/proc/PID/stat`` (10 ms steps: too coarse for runs shorter than a second or so)."""
    try:
        total = 0
        for task_id in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/schedstat" % (pid, task_id)) as f:
                total += int(f.read().split()[0])
        if total:
            return total / 1e9
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError, ValueError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime: fields 14 and 15 of proc(5)


def machine_busy_seconds():
    """CPU seconds all cores spent busy since boot (everything but idle and iowait), in clock ticks."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / CLK_TCK


class CPUMeter:
    """Percent of one core used by each named pid, by the whole machine and by everything else on it
    (``other``: other processes, kernel work not charged to a process), between start() and stop().

    The machine's figure counts clock ticks, so it and ``other`` are left out (None) for intervals under a
    second."""

    def __init__(self, pids):
        self.pids = dict(pids)

    def start(self):
        self.began = time.monotonic()
        self.before = {label: cpu_seconds(pid) for label, pid in self.pids.items()}
        self.machine_before = machine_busy_seconds()
        return self

    def stop(self) -> dict:
        wall = max(time.monotonic() - self.began, 1e-9)
        out = {}
        for label, pid in self.pids.items():
            after, before = cpu_seconds(pid), self.before[label]
            out[label] = None if after is None or before is None else round(100.0 * (after - before) / wall, 1)
        busy = machine_busy_seconds() - self.machine_before
        out["machine"] = round(100.0 * busy / wall, 1) if wall >= 1.0 else None
        ours = [v for k, v in out.items() if k != "machine"]
        known = out["machine"] is not None and None not in ours
        out["other"] = round(max(0.0, out["machine"] - sum(ours)), 1) if known else None
        return out


# the two sides


class Echo(LineReceiver):
    """Writes every line back."""

    delimiter = b"\n"
    MAX_LENGTH = 1 << 20

    def lineReceived(self, line):
        self.sendLine(line)


class EchoClient(LineReceiver):
    """Sends numbered lines with up to *window* in flight and times each one until its echo comes back."""

    delimiter = b"\n"
    MAX_LENGTH = 1 << 20

    def __init__(self, size, now=time.perf_counter):
        self.size = size
        self.now = now
        self.inflight = collections.deque()  # (time written, line) in sending order: TCP keeps it
        self.done = None
        self.lost = defer.Deferred()

    def line(self, n) -> bytes:
        head = b"%010d " % n
        return head + b"x" * max(0, self.size - len(head))

    def run(self, count, window, first=0) -> defer.Deferred:
        """Deferred[dict]: send *count* lines, *window* at a time; their rate and latencies."""
        self.count, self.next, self.end = count, first, first + count
        self.latencies, self.errors = [], 0
        self.done = defer.Deferred()
        self.began = self.now()
        for _ in range(min(window, count)):
            self.send_next()
        return self.done

    def send_next(self):
        line = self.line(self.next)
        self.next += 1
        self.inflight.append((self.now(), line))
        self.transport.write(line + b"\n")

    def lineReceived(self, line):
        arrived = self.now()
        written, expected = self.inflight.popleft()
        if line != expected:
            self.errors += 1
        self.latencies.append(arrived - written)
        if self.next < self.end:
            self.send_next()
        elif not self.inflight:
            elapsed = arrived - self.began
            done, self.done = self.done, None
            done.callback(dict(latency_summary(self.latencies), messages=self.count, seconds=round(elapsed, 4),
                               rate=round(self.count / elapsed, 1), errors=self.errors))

    def connectionLost(self, reason):
        if self.done is not None:
            done, self.done = self.done, None
            done.errback(reason)
        self.lost.callback(None)


# TLS with the peer daemons' own settings


def tls_options(directory, name):
    from p2pd.peer import identity

    return identity.tls_options(identity.load_or_create(os.path.join(directory, name), name))


def server_factory(tls_dir):
    factory = protocol.Factory.forProtocol(Echo)
    if tls_dir is None:
        return factory
    from twisted.protocols.tls import TLSMemoryBIOFactory

    return TLSMemoryBIOFactory(tls_options(tls_dir, "echo-server"), False, factory)


def client_endpoint(reactor, port, tls_dir):
    plain = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=10)
    if tls_dir is None:
        return plain
    return endpoints.wrapClientTLS(tls_options(tls_dir, "echo-client"), plain)


# processes


def serve(args):
    """The echo process: print the port, echo until SIGTERM or until the parent goes away."""
    from twisted.internet import reactor  # the default reactor, as twistd installs it

    parent = os.getppid()

    def check_parent():
        if os.getppid() != parent:
            reactor.stop()

    def listening(port):
        print(port.getHost().port, flush=True)

    status = []

    def failed(failure):
        sys.stderr.write("line_echo: cannot listen: %s\n" % failure.getErrorMessage())
        status.append(1)
        reactor.callWhenRunning(reactor.stop)

    endpoint = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    endpoint.listen(server_factory(args.tls_dir)).addCallbacks(listening, failed)
    watchdog = task.LoopingCall(check_parent)
    watchdog.clock = reactor
    watchdog.start(1.0, now=False)
    reactor.run()
    return status[0] if status else 0


def start_echo(tls_dir):
    """Start the echo process; (Popen, port)."""
    command = [sys.executable, os.path.abspath(__file__), "--serve"]
    if tls_dir is not None:
        command += ["--tls-dir", tls_dir]
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    ready, _, _ = select.select([proc.stdout], [], [], 20)
    line = proc.stdout.readline() if ready else b""
    if not line.strip().isdigit():
        stop_pid(proc)
        raise SystemExit("line_echo: the echo process did not print its port (%r)" % line)
    return proc, int(line)


async def measure(reactor, args, echo_pid, port, tls_dir):
    client = EchoClient(args.size)
    await endpoints.connectProtocol(client_endpoint(reactor, port, tls_dir), client)
    pids = {"sender": os.getpid(), "echo": echo_pid}
    await client.run(min(WARMUP_LINES, args.messages), args.window)
    meter = CPUMeter(pids).start()
    throughput = await client.run(args.messages, args.window, first=WARMUP_LINES)
    throughput.update(window=args.window, cpu_percent=meter.stop())
    meter = CPUMeter(pids).start()
    rtt = await client.run(args.rtt_samples, 1, first=WARMUP_LINES + args.messages)
    rtt.update(samples=rtt.pop("messages"), cpu_percent=meter.stop())
    client.transport.loseConnection()
    await client.lost
    return {"transport": "tls" if tls_dir else "tcp", "line_bytes": args.size + 1, "throughput": throughput,
            "rtt": rtt, "reactor": "%s.%s" % (type(reactor).__module__, type(reactor).__name__)}


def run(args):
    tls_home = tempfile.mkdtemp(prefix="p2pd-echo-") if args.tls else None
    try:
        echo, port = start_echo(tls_home)
        try:
            report = []

            async def main(reactor):
                report.append(await measure(reactor, args, echo.pid, port, tls_home))

            try:
                task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
            except SystemExit as e:
                if e.code:
                    raise
        finally:
            stop_pid(echo)
    finally:
        if tls_home is not None:
            import shutil

            shutil.rmtree(tls_home, ignore_errors=True)
    if not report:
        raise SystemExit("line_echo: the measurement did not complete")
    return report[0]


def describe(report) -> str:
    t, r = report["throughput"], report["rtt"]
    return ("line echo over %s, %d-byte lines: %d lines at window %d: %.0f lines/s (p50 %.3f ms, p99 %.3f ms); "
            "round trip over %d samples: p50 %.3f ms, p99 %.3f ms, max %.3f ms; errors %d"
            % (report["transport"].upper(), report["line_bytes"], t["messages"], t["window"], t["rate"],
               t["p50_ms"], t["p99_ms"], r["samples"], r["p50_ms"], r["p99_ms"], r["max_ms"],
               t["errors"] + r["errors"]))


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--messages", type=int, default=20000, help="lines for the throughput run (default 20000)")
    add("--window", type=int, default=256, help="lines in flight during the throughput run (default 256)")
    add("--rtt-samples", type=int, default=2000, help="lines sent one at a time for the round trip (default 2000)")
    add("--size", type=int, default=160, help="bytes per line, newline excluded (default 160)")
    add("--tls", action="store_true", help="TLS 1.3 with the peer daemons' settings instead of plain TCP")
    add("--text", action="store_true", help="print a one-line summary instead of JSON")
    add("--serve", action="store_true", help="be the echo process: print the port, echo lines")
    add("--tls-dir", help="with --serve: directory for the echo process's TLS identity (enables TLS)")
    args = parser.parse_args(argv)
    for name, low, high in (("messages", 1, 10**7), ("window", 1, 100000), ("rtt_samples", 1, 10**6),
                            ("size", 11, 60000)):
        if not low <= getattr(args, name) <= high:
            parser.error("--%s must be from %d to %d" % (name.replace("_", "-"), low, high))
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.serve:
        return serve(args)

    procs.exit_on_signals()
    report = run(args)
    print(describe(report) if args.text else json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
