"""Registry throughput and latency, side by side with a bare Klein route on the same HTTP stack.

    .venv/bin/python benchmarks/registry_bench.py [--duration 10] [--clients 50] [--peers 1000] [--json]

One run starts a real registry (``twistd -n p2pd --role=registry`` with embedded Redis, rate limits off) and
``benchmarks/bare_klein.py``, registers ``--peers`` names with signed PUTs, then drives three closed-loop loads
one after the other from ``benchmarks/loadgen.py`` in separate processes: the bare route, lookups of random
registered names, and heartbeats each signed with a fresh nonce (all signed before the timer starts). It prints
rate, p50 and p99 for each, the registry's rates as a percentage of the bare route's, and PASS/FAIL against the
targets. Every process it starts is stopped by its pid on exit, error or Ctrl-C.

Exit status: 0 when the benchmark ran (whatever the verdict; 1 with ``--strict`` when a target failed),
2 when it could not run, 130 when interrupted.
"""

import argparse
import json
import math
import os
import pathlib
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import loadgen  # noqa: E402  (benchmarks/ is on sys.path as the script's directory)
from procs import stop_pid  # noqa: E402

from p2pd.core import jsonbody, signing  # noqa: E402
from tests.registry_process import RegistryProcess  # noqa: E402

LOOKUP_SHARE = 0.60     # lookups must reach this fraction of the bare route's rate
P99_LIMIT_MS = 50.0     # and answer 99% of requests within this
MAX_HEARTBEATS = 250_000
LOOKUP_MIX = 4096       # distinct pre-built lookup requests (random names), cycled
ROWS = (
    ("bare", "GET /bare (bare Klein)"),
    ("lookup", "GET /v1/peers/{name}"),
    ("heartbeat", "POST /v1/peers/{name}/heartbeat"),
)


class BenchError(Exception):
    """The benchmark could not run; the message says why."""


def http_request(method, path, host, headers=None, body=None) -> bytes:
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: %s" % host]
    lines += ["%s: %s" % item for item in (headers or {}).items()]
    if body is not None:
        lines.append("Content-Length: %d" % len(body))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def percentile(ordered, q):
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def summarize(parts):
    """Merge the results of the load processes of one row."""
    latencies = sorted(x for p in parts for x in p["latencies_us"])
    completed = sum(p["completed"] for p in parts)
    elapsed = max(p["elapsed"] for p in parts) or 1e-9
    statuses = {}
    for p in parts:
        for code, n in p["statuses"].items():
            statuses[code] = statuses.get(code, 0) + n
    cpu = {}
    for p in parts:  # the load processes add up; the servers and the machine are the same for all of them
        for label, value in p["cpu"].items():
            if label == "loadgen":
                cpu[label] = None if value is None or cpu.get(label, 0) is None else cpu.get(label, 0) + value
            else:
                cpu[label] = value
    if cpu.get("machine") is not None and None not in (cpu.get(k, 0) for k in ("server", "redis", "loadgen")):
        ours = sum(cpu.get(k) or 0 for k in ("server", "redis", "loadgen"))
        cpu["other"] = round(max(0.0, cpu["machine"] - ours), 1)
    ms = lambda us: None if us is None else round(us / 1000.0, 2)  # noqa: E731
    return {
        "requests": completed, "seconds": round(elapsed, 3), "rate": round(completed / elapsed, 1),
        "p50_ms": ms(percentile(latencies, 0.50)), "p99_ms": ms(percentile(latencies, 0.99)),
        "max_ms": ms(latencies[-1] if latencies else None),
        "errors": sum(p["errors"] for p in parts), "statuses": statuses,
        "exhausted": any(p["exhausted"] for p in parts), "cpu_percent": cpu,
    }


class Bench:
    """The processes of one run and the loads sent to them; :meth:`close` stops all of them by pid."""

    def __init__(self, args, progress):
        self.args = args
        self.progress = progress
        self.tmp = pathlib.Path(tempfile.mkdtemp(prefix="p2pd-bench-"))
        self.registry = None
        self.bare = None
        self.bare_log = None
        self.bare_port = None
        self.children = []
        self.identities = []
        self.names = []

    # processes

    def start(self):
        self.progress("starting the registry (embedded Redis) and the bare Klein server")
        self.registry = RegistryProcess(self.tmp / "registry", stun=False)
        try:
            self.registry.start()
            self.registry.wait_healthy()
        except RuntimeError as e:
            raise BenchError("the registry did not start: %s" % e) from None
        self.bare_log = open(self.tmp / "bare_klein.log", "wb")
        self.bare = subprocess.Popen([sys.executable, str(HERE / "bare_klein.py")], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=self.bare_log)
        ready, _, _ = select.select([self.bare.stdout], [], [], 20)
        line = self.bare.stdout.readline() if ready else b""
        if not line.strip().isdigit():
            raise BenchError("bare_klein.py did not print its port: %r\n%s"
                             % (line, self.read(self.tmp / "bare_klein.log")))
        self.bare_port = int(line)

    @property
    def registry_port(self):
        return self.registry.http_port

    def redis_pid(self):
        try:
            return int((self.tmp / "registry" / "redis.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def reactors(self):
        def find(text, marker):
            for line in text.splitlines():
                if marker in line:
                    return line.split(marker, 1)[1].strip().rstrip(".").rstrip(")").split(".")[-1]
            return "unknown"
        return {"registry": find(self.read(self.registry.log_path), "reactor class:"),
                "bare": find(self.read(self.tmp / "bare_klein.log"), "(reactor ")}

    @staticmethod
    def read(path):
        try:
            return pathlib.Path(path).read_text(errors="replace")
        except OSError:
            return ""

    def close(self):
        for child in self.children:
            stop_pid(child)
        if self.bare is not None:
            stop_pid(self.bare)
            self.bare.stdout.close()
            self.bare_log.close()
        if self.registry is not None:
            self.registry.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # loads

    def load(self, label, port, requests, mode="loop", reuse=True, expect=(200,), watch=None, connections=None):
        """Run one load with ``--loadgen-procs`` processes; the merged summary."""
        args = self.args
        procs = 1 if mode == "once" else args.loadgen_procs
        connections = connections or args.clients
        path = self.tmp / ("%s.requests" % label)
        loadgen.write_requests(path, requests)
        timeout = (args.warmup + args.duration if mode == "loop" else 120) + 30
        start_at = time.time() + 1.0 if procs > 1 else None
        running = []
        for i in range(procs):
            share = connections // procs + (1 if i < connections % procs else 0)
            spec = {"host": "127.0.0.1", "port": port, "connections": share, "requests": str(path),
                    "slice": [i, procs], "mode": mode, "reuse": reuse, "warmup": args.warmup,
                    "duration": args.duration, "start_at": start_at, "expect": list(expect),
                    "watch": watch or {}, "timeout": timeout}
            spec_path = self.tmp / ("%s.%d.json" % (label, i))
            spec_path.write_text(json.dumps(spec))
            proc = subprocess.Popen([sys.executable, str(HERE / "loadgen.py"), str(spec_path)],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            self.children.append(proc)
            running.append(proc)
        parts = []
        deadline = time.monotonic() + timeout + 15
        for proc in running:
            try:
                out, err = proc.communicate(timeout=max(1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise BenchError("the load generator for %s did not finish in time" % label) from None
            if proc.returncode != 0:
                raise BenchError("the load generator for %s failed (%s): %s" % (
                    label, proc.returncode, err.decode(errors="replace")[-2000:]))
            parts.append(json.loads(out))
            self.children.remove(proc)
        return summarize(parts)

    def register_peers(self):
        n = self.args.peers
        self.progress("registering %d peers with signed PUTs" % n)
        host = "127.0.0.1:%d" % self.registry_port
        now = time.time()
        requests = []
        for i in range(n):
            identity, name = signing.Identity.generate(), "bench-%05d" % i
            path = "/v1/peers/%s" % name
            body = jsonbody.dumps({"key": identity.public_text, "tcp": ["127.0.0.1:%d" % (20000 + i % 40000)],
                                   "udp": ["127.0.0.1:%d" % (20000 + i % 40000)]})
            headers = {"Content-Type": "application/json"}
            headers.update(signing.sign_request(identity, name, "PUT", path, body, now))
            requests.append(http_request("PUT", path, host, headers, body))
            self.identities.append(identity)
            self.names.append(name)
        result = self.load("register", self.registry_port, requests, mode="once", expect=(200, 201))
        if result["errors"] or result["requests"] != n:
            raise BenchError("registering %d peers: %d answered, %d errors, statuses %s\n%s" % (
                n, result["requests"], result["errors"], result["statuses"], self.registry.log_tail(20)))
        self.progress("  %d peers registered in %.2f s (%.0f/s)" % (n, result["seconds"], result["rate"]))
        return result

    def lookups(self):
        host = "127.0.0.1:%d" % self.registry_port
        rng = random.Random(1)
        return [http_request("GET", "/v1/peers/%s" % rng.choice(self.names), host)
                for _ in range(max(LOOKUP_MIX, len(self.names)))]

    def heartbeats(self, count):
        """*count* heartbeats, each signed with a fresh nonce. The timestamp is the middle of the load's
        span, so every request is well inside the registry's +/-60 s window while it is sent."""
        host = "127.0.0.1:%d" % self.registry_port
        stamp = time.time() + (self.args.warmup + self.args.duration) / 2
        requests = []
        for i in range(count):
            k = i % len(self.names)
            path = "/v1/peers/%s/heartbeat" % self.names[k]
            headers = signing.sign_request(self.identities[k], self.names[k], "POST", path, b"", stamp)
            requests.append(http_request("POST", path, host, headers, b""))
        return requests

    def run(self):
        args = self.args
        self.start()
        registration = self.register_peers()
        registry_watch = {"server": self.registry.pid, "redis": self.redis_pid()}
        rows = {}
        self.progress("bare route: %d clients for %.1f s (+%.1f s warm-up)"
                      % (args.clients, args.duration, args.warmup))
        bare = http_request("GET", "/bare", "127.0.0.1:%d" % self.bare_port)
        rows["bare"] = self.load("bare", self.bare_port, [bare], watch={"server": self.bare.pid})
        self.progress("lookups: %d clients for %.1f s" % (args.clients, args.duration))
        rows["lookup"] = self.load("lookup", self.registry_port, self.lookups(), watch=registry_watch)
        # Enough single-use heartbeats for the lookup rate (a heartbeat does strictly more work) plus margin.
        count = min(MAX_HEARTBEATS, max(2000, int(rows["lookup"]["rate"] * (args.warmup + args.duration) * 1.5)))
        began = time.monotonic()
        requests = self.heartbeats(count)
        self.progress("heartbeats: %d pre-signed in %.1f s; %d clients for %.1f s" % (
            count, time.monotonic() - began, args.clients, args.duration))
        rows["heartbeat"] = self.load("heartbeat", self.registry_port, requests, reuse=False, watch=registry_watch)
        return registration, rows


def checks(rows):
    bare, lookup, heartbeat = rows["bare"], rows["lookup"], rows["heartbeat"]
    share = lookup["rate"] / bare["rate"] if bare["rate"] else 0.0
    out = [{"check": "lookups >= %d%% of bare rate" % (LOOKUP_SHARE * 100), "value": "%.1f%%" % (share * 100),
            "pass": share >= LOOKUP_SHARE}]
    for label, row in (("lookup", lookup), ("heartbeat", heartbeat)):
        p99 = row["p99_ms"]
        out.append({"check": "%s p99 < %g ms" % (label, P99_LIMIT_MS),
                    "value": "n/a" if p99 is None else "%.1f ms" % p99,
                    "pass": p99 is not None and p99 < P99_LIMIT_MS})
    errors = sum(r["errors"] for r in rows.values())
    out.append({"check": "no errors, no early stop", "value": "%d errors" % errors,
                "pass": errors == 0 and not any(r["exhausted"] for r in rows.values()) and
                all(r["requests"] for r in rows.values())})
    return out


def fmt(value, pattern):
    return "-" if value is None else pattern % value


def table(report) -> str:
    cfg, rows = report["config"], report["results"]
    bare_rate = rows["bare"]["rate"]
    lines = [
        "p2pd registry benchmark: %d keep-alive HTTP/1.1 clients, %g s measured after %g s warm-up, "
        "%d peers registered" % (cfg["clients"], cfg["duration"], cfg["warmup"], cfg["peers"]),
        "load generated by: %s" % report["load_generator"]["description"],
        "reactors: registry %s, bare %s; %d CPU cores shared by server, Redis and load generator"
        % (report["reactors"]["registry"], report["reactors"]["bare"], report["cores"]),
        "",
        "%-10s %-32s %9s %9s %8s %8s %7s %8s   %s" % ("row", "route", "requests", "req/s", "p50 ms", "p99 ms",
                                                      "errors", "% bare", "CPU % server/redis/loadgen/other"),
    ]
    for key, route in ROWS:
        row = rows[key]
        cpu = row["cpu_percent"]
        share = "100.0%" if key == "bare" else fmt(100.0 * row["rate"] / bare_rate if bare_rate else None, "%.1f%%")
        lines.append("%-10s %-32s %9d %9.1f %8s %8s %7d %8s   %s" % (
            key, route, row["requests"], row["rate"], fmt(row["p50_ms"], "%.2f"), fmt(row["p99_ms"], "%.2f"),
            row["errors"], share, "/".join(fmt(cpu.get(k), "%.0f") for k in ("server", "redis", "loadgen", "other"))))
    lines += ["", "targets:"]
    for check in report["checks"]:
        lines.append("  %-34s %-12s %s" % (check["check"], check["value"], "PASS" if check["pass"] else "FAIL"))
    lines.append("result: %s" % ("PASS" if report["pass"] else "FAIL"))
    for note in report["notes"]:
        lines.append("note: " + note)
    return "\n".join(lines)


def notes(rows):
    out = []
    for key, row in rows.items():
        load = row["cpu_percent"].get("loadgen")
        if load is not None and load > 80:
            out.append("the load generator used %.0f%% CPU during %s: it may be what limits the rate" % (load, key))
        other = row["cpu_percent"].get("other")
        if other is not None and other > 25:
            out.append("%.0f%% of a core went elsewhere during %s (other processes, kernel networking): "
                       "figures may be low" % (other, key))
        if row["exhausted"]:
            out.append("%s ran out of pre-signed requests after %.1f s" % (key, row["seconds"]))
        if row["errors"]:
            out.append("%s: %d errors, statuses %s" % (key, row["errors"], row["statuses"]))
    return out


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--duration", type=float, default=10.0, help="measured seconds per row (0.2-50, default 10)")
    add("--warmup", type=float, default=1.0, help="unmeasured seconds before each row (0-5, default 1)")
    add("--clients", type=int, default=50, help="concurrent keep-alive connections (1-1000, default 50)")
    add("--peers", type=int, default=1000, help="peers registered before measuring (1-100000, default 1000)")
    parser.add_argument("--loadgen-procs", type=int, default=1,
                        help="load generator processes sharing the connections (1-8, default 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    args = parser.parse_args(argv)
    # Heartbeats are signed before their row starts, with a timestamp in the middle of it: the row must fit
    # inside the registry's 60 s window around that timestamp.
    for name, low, high in (("duration", 0.2, 50), ("warmup", 0, 5), ("clients", 1, 1000), ("peers", 1, 100000),
                            ("loadgen_procs", 1, 8)):
        if not low <= getattr(args, name) <= high:
            parser.error("--%s must be from %g to %g" % (name.replace("_", "-"), low, high))
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)

    def terminated(signum, frame):
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, terminated)
    progress = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    bench = Bench(args, progress)
    try:
        registration, rows = bench.run()
        reactors = bench.reactors()
    except BenchError as e:
        print("registry_bench: %s" % e, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("registry_bench: interrupted", file=sys.stderr)
        return 130
    finally:
        bench.close()
    report = {
        "config": {"duration": args.duration, "warmup": args.warmup, "clients": args.clients, "peers": args.peers,
                   "loadgen_procs": args.loadgen_procs},
        "load_generator": {"kind": "python-asyncio", "processes": args.loadgen_procs, "description":
                           "benchmarks/loadgen.py (Python asyncio raw sockets, %d process%s, one request in flight "
                           "per connection, requests pre-built and heartbeats pre-signed)"
                           % (args.loadgen_procs, "" if args.loadgen_procs == 1 else "es")},
        "reactors": reactors,
        "cores": os.cpu_count(),
        "registration": {k: registration[k] for k in ("requests", "seconds", "rate", "errors")},
        "results": rows,
        "targets": {"lookup_share_of_bare": LOOKUP_SHARE, "p99_ms": P99_LIMIT_MS},
    }
    report["checks"] = checks(rows)
    report["pass"] = all(c["pass"] for c in report["checks"])
    report["notes"] = notes(rows)
    print(json.dumps(report, indent=2) if args.json else table(report))
    return 1 if args.strict and not report["pass"] else 0


if __name__ == "__main__":
    sys.exit(main())
