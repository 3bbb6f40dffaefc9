"""Process helpers shared by the benchmark scripts (benchmarks/ is on sys.path as the script's directory)."""

import json
import signal
import subprocess
import sys


def stop_pid(proc, grace=5):
    """SIGTERM one child we started, then SIGKILL it if it lingers."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(grace)
        except ProcessLookupError:
            pass
    if proc.stdout is not None:
        proc.stdout.close()


def exit_on_signals():
    """SIGTERM ends the script with status 143 through the normal cleanup (``finally`` blocks stop what it
    started); SIGINT raises KeyboardInterrupt even when the script was started with SIGINT ignored."""

    def terminated(signum, frame):
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, terminated)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def revision(root) -> str:
    """The commit of the checkout at *root*, with "+changes" when p2pd/ differs from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "p2pd"], cwd=root, capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + ("+changes" if dirty else "")


class BenchError(Exception):
    """The benchmark could not run; the message says why."""


def progress(text):
    """A progress line, on stderr (stdout carries the table or the JSON)."""
    print(text, file=sys.stderr, flush=True)


def run(name, make_bench):
    """Make the benchmark (``make_bench(progress)``: an object with ``run() -> report`` and ``close()``) and run
    it: ``(bench, report)``. One that cannot run ends the script with status 2 and one line on stderr; Ctrl-C ends
    it with 130. Either way ``close()`` stops whatever it started."""
    try:
        bench = make_bench(progress)
    except OSError as e:
        print("%s: cannot make a temporary directory: %s" % (name, e), file=sys.stderr)
        raise SystemExit(2)
    try:
        return bench, bench.run()
    except BenchError as e:
        print("%s: %s" % (name, e), file=sys.stderr)
        raise SystemExit(2)
    except KeyboardInterrupt:
        print("%s: interrupted" % name, file=sys.stderr)
        raise SystemExit(130)
    finally:
        bench.close()


def verdict(report, checks, notes, args, table) -> int:
    """Judge *report*, print it (a table, or JSON with ``--json``) and return the exit status (1 for a failed check
    with ``--strict``)."""
    report["checks"] = checks(report)
    report["pass"] = all(c["pass"] is not False for c in report["checks"])
    report["notes"] = notes(report)
    print(json.dumps(report, indent=2) if args.json else table(report))
    return 1 if args.strict and not report["pass"] else 0


def proc_status_kb(pid, field):
    """A ``kB`` field (``VmRSS``, ``VmHWM``) of /proc/PID/status; None if the process is gone."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def verdict_lines(report, heading, widths) -> list:
    """The table's closing lines: *heading*, one line per check (check and value padded to *widths*) with
    PASS/FAIL/SKIP, the overall result and the notes."""
    lines = ["", heading]
    for check in report["checks"]:
        mark = {True: "PASS", False: "FAIL", None: "SKIP"}[check["pass"]]
        lines.append("  %-*s %-*s %s" % (widths[0], check["check"], widths[1], check["value"], mark))
    lines.append("result: %s" % ("PASS" if report["pass"] else "FAIL"))
    lines += ["note: " + note for note in report["notes"]]
    return lines


def start_pair(tmp, bob_args=()):
    """A registry (embedded Redis, no STUN) and two peer daemons, alice and bob (*bob_args* added to bob's
    options), all on 127.0.0.1 under the directory *tmp*: ``(registry, alice, bob)``. BenchError if they do not
    start, after stopping whatever did."""
    from tests.peer_process import PeerProcess
    from tests.registry_process import RegistryProcess

    started = []
    try:
        registry = RegistryProcess(tmp / "registry", stun=False)
        started.append(registry)
        registry.start()
        registry.wait_healthy()
        alice = PeerProcess(tmp / "alice", "alice", registry.http)
        started.append(alice)
        alice.start()
        bob = PeerProcess(tmp / "bob", "bob", registry.http, args=list(bob_args))
        started.append(bob)
        bob.start()
    except (RuntimeError, AssertionError, OSError) as e:
        for proc in reversed(started):
            proc.stop()
        raise BenchError("the daemons did not start: %s" % e) from None
    return registry, alice, bob
