"""Bulk bytes on loopback for issue 14's stream: the p2pd UDP stream beside a raw Twisted blast, the TCP transfer
path and aioquic, direct and through the lossy proxy; issue 14's targets judged.

    .venv/bin/python benchmarks/udp_bench.py [--size 256M] [--lossy-size 4M] [--losses 0,0.01,0.05,0.2] [--json]
    .venv/bin/python benchmarks/udp_bench.py --quick            # smoke run: 8 MiB, 512 KiB at 0% and 5%
    .venv/bin/python benchmarks/udp_bench.py --only stream --memory --memory-size 2G   # the memory run alone

Every row is one transfer between two child processes on 127.0.0.1 (:func:`run_pair`), the receiver started
first; timed by the receiver, from the first byte it got to the last. On loopback, ``--size`` bytes each:

(a) raw: ``udp_raw.py``, a Twisted DatagramProtocol writing 1200-byte datagrams as fast as it can (backing off on
    EAGAIN/ENOBUFS) to a DatagramProtocol in another process that counts what arrives. No reliability: the
    ceiling for bytes through Twisted's UDP on this machine.
(b) tcp: ``tcp_records.py``, the TCP transfer path of files: the AES-GCM records of ``p2pd/core/datastream.py`` over
    the daemon's ``DataConnection``, accepted by its demux; counted, not written to disk.
(c) aioquic: ``quic_bulk.py``, one QUIC stream (aioquic's asyncio API, TLS 1.3 with a self-signed certificate made
    at run time, NewReno, 1200-byte datagrams).
stream: ``udp_stream_ends.py``, the p2pd UDP stream (``p2pd/core/udpstream.py`` on a ``StreamPort`` and a GSO/GRO
    ``BatchPort``), counted by the receiver, not written to disk.

Then through ``lossy_proxy.py`` (its own process) at 10 Mbit/s and 15 ms each way (RTT 30 ms, 64 KiB queue), with
each ``--losses`` share of datagrams dropped at random in both directions (seed 1), ``--lossy-size`` bytes per
run: the raw sender paced at the link's rate (what the path itself delivers), aioquic and the stream. Every run is
cut at ``--max-seconds`` (what arrived by then is reported). Last, the memory run (``--memory``; on by default
except with ``--quick``): ``--memory-size`` (2 GiB) over the stream on loopback, each end's peak resident memory.
Every row samples its processes' VmRSS every 0.2 s; the stream's ends also report their own peak (VmHWM).

The targets of issue 14 are printed with PASS/FAIL (see :mod:`udp_report`); the exit status is 0 unless
``--strict`` and a target failed (1), or the benchmark could not run (2). aioquic comes from the ``bench`` extra
(``./dev bench`` installs it); without it its rows are skipped, with the reason in the report. Every process is
stopped by its pid; each also exits when this one does. A contender is two commands: see :class:`Contender`.
"""

import argparse
import collections
import dataclasses
import importlib.util
import json
import os
import pathlib
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from file_bench import MemorySampler, human_size, parse_size, pdeathsig  # noqa: E402  (benchmarks/ is the script's dir)
from line_echo import CPUMeter  # noqa: E402
import procs  # noqa: E402
from procs import stop_pid  # noqa: E402
import udp_report  # noqa: E402

PY = sys.executable
MB = 1e6
LINK = ["--rate", "10mbit", "--delay", "0.015", "--queue", "64K", "--seed", "1"]  # (c), each way
LINK_RATE = 1_250_000  # bytes/s: 10 Mbit/s

BenchError = procs.BenchError
Transfer = collections.namedtuple("Transfer", "bytes seconds extra")


# the harness


class Child:
    """A child process whose stdout is JSON lines, read by a thread; stderr goes to a file."""

    def __init__(self, name, argv, workdir):
        self.name = name
        self.err_path = os.path.join(workdir, name + ".err")
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                                         cwd=workdir, preexec_fn=pdeathsig)
        self.lines = queue.Queue()
        self.last = None
        self.reader = threading.Thread(target=self.read, name=name + "-stdout", daemon=True)
        self.reader.start()

    def read(self):
        try:
            for raw in self.proc.stdout:
                try:
                    self.lines.put(json.loads(raw))
                except ValueError:
                    pass  # not one of its reports
        except (OSError, ValueError):  # stdout closed under us: the run is being torn down
            pass
        self.lines.put(None)

    def line(self, timeout) -> dict:
        """Its next JSON line; BenchError when it exits first or *timeout* s pass (queue.Empty)."""
        line = self.lines.get(timeout=timeout)
        if line is None:
            self.lines.put(None)
            raise BenchError("%s exited (%s) without reporting: %s" % (self.name, self.proc.wait(), self.stderr()))
        self.last = line
        return line

    def finish(self, grace) -> dict:
        """Let it exit by itself within *grace* s, else SIGTERM it; its last JSON line (None: it had none)."""
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.terminate()  # by its pid, like everything here
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(10)
        while not self.lines.empty():
            line = self.lines.get()
            if line is not None:
                self.last = line
        return self.last

    def stderr(self):
        try:
            with open(self.err_path, errors="replace") as f:
                return f.read()[-1500:]
        except OSError:
            return ""


def run_pair(receiver, sender, *, timeout, workdir, proxy=None) -> Transfer:
    """One transfer between two child processes: ``Transfer(bytes, seconds, extra)``.

    *receiver* and *sender* are argv lists in which ``{port}`` and ``{dir}`` are replaced (``{dir}``: *workdir*,
    which both share). The receiver starts first and prints one JSON line with ``port`` (where it listens on
    127.0.0.1, UDP or TCP); with *proxy* (a list of ``lossy_proxy.py`` options) a proxy goes in front of it; then the
    sender starts, its ``{port}`` being the receiver's or the proxy's. The receiver's next JSON line is its result,
    with at least ``bytes`` and ``seconds`` (and ``complete`` when it can tell); after *timeout* s it gets SIGTERM
    and must then print what it has so far. ``extra`` holds the receiver's, the sender's and the proxy's reports
    (each its last JSON line), ``timed_out``, the CPU each process used (% of one core), the largest VmRSS
    sampled of each (``rss_mb``; ``rss_halves_mb``: in the first and the second half of the run) and the datagrams
    the kernel dropped for full receive buffers meanwhile (``rcvbuf_errors``, machine-wide)."""
    started = []
    try:
        rx = Child("receiver", fill(receiver, dir=workdir), workdir)
        started.append(rx)
        port = rx.line(30)["port"]
        px = None
        if proxy is not None:
            px = Child("proxy", [PY, str(HERE / "lossy_proxy.py"), "--target", "127.0.0.1:%d" % port] + list(proxy),
                       workdir)
            started.append(px)
            port = px.line(30)["port"]
        tx = Child("sender", fill(sender, port=port, dir=workdir), workdir)
        started.append(tx)
        meter = CPUMeter({c.name: c.proc.pid for c in started}).start()
        memory = RSSSampler({c.name: c.proc.pid for c in started}).start()
        overflows = rcvbuf_errors()
        began = time.monotonic()
        timed_out = False
        while True:
            try:
                result = rx.line(1.0)
                break
            except queue.Empty:
                if tx.proc.poll():
                    raise BenchError("the sender failed (%s): %s" % (tx.proc.returncode, tx.stderr())) from None
                if time.monotonic() - began >= timeout:
                    timed_out = True
                    rx.proc.terminate()
                    result = rx.line(10)
                    break
        cpu = meter.stop()
        rss = memory.stop()
        if overflows is not None:
            overflows = rcvbuf_errors() - overflows
        extra = {"timed_out": timed_out, "wall_seconds": round(time.monotonic() - began, 3), "cpu_percent": cpu,
                 "rcvbuf_errors": overflows, "rss_mb": rss, "rss_halves_mb": memory.halves(),
                 "receiver": result, "sender": tx.finish(10)}
        if px is not None:
            extra["proxy"] = px.finish(0)
        rx.finish(10)
        return Transfer(result["bytes"], result["seconds"], extra)
    except queue.Empty:
        raise BenchError("no port from %s within 30 s: %s" % (started[-1].name, started[-1].stderr())) from None
    finally:
        for child in reversed(started):
            stop_pid(child.proc)


class RSSSampler(MemorySampler):
    """A MemorySampler that keeps every sample, to compare the peak of a run's first half with its second's."""

    def __init__(self, pids):
        super().__init__(pids)
        self.series = {label: [] for label in self.pids}

    def sample(self):
        for label, pid in self.pids.items():
            kb = procs.proc_status_kb(pid, "VmRSS")
            if kb is not None:
                self.series[label].append(kb)
                self.peak_kb[label] = max(self.peak_kb[label], kb)
        self.samples += 1

    def halves(self) -> dict:
        """Each pid's largest VmRSS (MB) in the first and in the second half of its samples."""
        return {label: [round(max(part) * 1024 / MB, 1) if part else None for part in (kb[:len(kb) // 2],
                                                                                        kb[len(kb) // 2:])]
                for label, kb in self.series.items()}


def fill(argv, **values) -> list:
    """*argv* with each ``{name}`` replaced by ``values[name]`` (nothing else in it is touched)."""
    out = []
    for arg in argv:
        for name, value in values.items():
            arg = arg.replace("{%s}" % name, str(value))
        out.append(arg)
    return out


def rcvbuf_errors():
    """The machine's count of UDP datagrams dropped for a full receive buffer (/proc/net/snmp RcvbufErrors)."""
    try:
        with open("/proc/net/snmp") as f:
            rows = [line.split() for line in f if line.startswith("Udp:")]
        return int(rows[1][rows[0].index("RcvbufErrors")])
    except (OSError, ValueError, IndexError):
        return None


@dataclasses.dataclass(frozen=True)
class Contender:
    """A way of moving bytes, as two commands for :func:`run_pair` (``{size}`` is replaced too, with the bytes
    to move). *missing*: why it cannot run here (None: it can). *lossy*: whether it runs through the proxy in (c)
    (reliable contenders do; the raw blast runs there paced, as ``raw-paced``)."""

    name: str
    title: str
    receiver: tuple
    sender: tuple
    missing: object = None
    lossy: bool = True


def contenders() -> list:
    """The contenders, in the order of the rows."""
    raw = [PY, str(HERE / "udp_raw.py")]
    quic = [PY, str(HERE / "quic_bulk.py")]
    tcp = [PY, str(HERE / "tcp_records.py")]
    stream = [PY, str(HERE / "udp_stream_ends.py")]
    no_aioquic = None if importlib.util.find_spec("aioquic") else (
        "aioquic is not installed: skipping its rows; install it with '.venv/bin/pip install -e .[bench]' "
        "(./dev bench does)")
    return [
        Contender("raw", "(a) raw Twisted UDP blast (ceiling)", tuple(raw + ["receive"]),
                  tuple(raw + ["send", "--port", "{port}", "--size", "{size}"]), lossy=False),
        Contender("raw-paced", "raw UDP paced at 10 Mbit/s", tuple(raw + ["receive"]),
                  tuple(raw + ["send", "--port", "{port}", "--size", "{size}", "--rate", str(LINK_RATE)])),
        Contender("tcp", "(b) TCP transfer path (AES-GCM records)", tuple(tcp + ["receive"]),
                  tuple(tcp + ["send", "--port", "{port}", "--size", "{size}"]), lossy=False),
        Contender("aioquic", "(c) aioquic, one stream (NewReno)", tuple(quic + ["receive", "--dir", "{dir}"]),
                  tuple(quic + ["send", "--port", "{port}", "--size", "{size}", "--dir", "{dir}"]), no_aioquic),
        Contender("stream", "p2pd UDP stream (BBR, GSO/GRO)", tuple(stream + ["recv"]),
                  tuple(stream + ["send", "--port", "{port}", "--size", "{size}"])),
    ]


def run_contender(contender, size, *, timeout, workdir, proxy=None) -> dict:
    """One row: *contender* moving *size* bytes (through a proxy with the options *proxy*)."""
    os.makedirs(workdir, exist_ok=True)
    got = run_pair(fill(contender.receiver, size=size), fill(contender.sender, size=size), timeout=timeout,
                   workdir=workdir, proxy=proxy)
    rx = got.extra["receiver"]
    row = {"bytes": got.bytes, "seconds": got.seconds, "size": size,
           "complete": rx.get("complete", got.bytes >= size) and not got.extra["timed_out"],
           "MBps": round(got.bytes / got.seconds / MB, 2) if got.seconds else None,
           "Mbps": round(8 * got.bytes / got.seconds / MB, 3) if got.seconds else None}
    if "datagrams" in rx and got.seconds:
        row["datagrams_per_s"] = round(rx["datagrams"] / got.seconds)
        sent = (got.extra["sender"] or {}).get("datagrams")
        row["lost_share"] = round(1 - rx["datagrams"] / sent, 4) if sent else None
    row.update(got.extra)
    return row


# the run


class Bench:
    def __init__(self, args, progress):
        self.args, self.progress = args, progress
        self.tmp = pathlib.Path(tempfile.mkdtemp(prefix="p2pd-udp-bench-"))
        self.runs = 0

    def close(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def one(self, contender, size, proxy=None):
        self.runs += 1
        row = run_contender(contender, size, timeout=self.args.max_seconds, proxy=proxy,
                            workdir=str(self.tmp / ("%02d-%s" % (self.runs, contender.name))))
        self.progress("  %-10s %s in %.2f s: %s MB/s, %s Mbit/s%s" % (
            contender.name, human_size(row["bytes"]), row["seconds"], row["MBps"], row["Mbps"],
            "" if row["complete"] else " (did not finish)"))
        return row

    def run(self):
        args = self.args
        report = {"loopback": {}, "lossy": {}, "skipped": {}, "load_average": [round(x, 2) for x in
                                                                              os.getloadavg()]}
        every = [c for c in contenders() if not args.only or c.name in args.only]
        for c in every:
            if c.missing:
                report["skipped"][c.name] = c.missing
                self.progress(c.missing)
        ready = [c for c in every if not c.missing]
        if ready:
            self.progress("loopback, %s each" % human_size(args.size))
        for c in ready:
            if c.name != "raw-paced":
                report["loopback"][c.name] = self.one(c, args.size)
        lossy = [c for c in ready if c.lossy]
        for loss in args.losses if lossy else ():
            self.progress("through lossy_proxy.py, 10 Mbit/s, 15 ms each way, %g%% loss both ways, %s each" % (
                100 * loss, human_size(args.lossy_size)))
            report["lossy"]["%g" % loss] = {c.name: self.one(c, args.lossy_size, LINK + ["--loss", str(loss)])
                                            for c in lossy}
        if args.memory:
            stream = next(c for c in contenders() if c.name == "stream")
            self.progress("memory: %s over the stream on loopback" % human_size(args.memory_size))
            report["memory"] = self.one(stream, args.memory_size)
        return report


def losses(text):
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("not a list of loss shares: %r (e.g. 0,0.01,0.05,0.2)" % text) from None
    if not all(0 <= v < 1 for v in values):
        raise argparse.ArgumentTypeError("each loss is a share from 0 to below 1: %r" % text)
    return values


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--size", type=parse_size, help="bytes per row on loopback: with K/M/G (binary), default 256M (quick: 8M)")
    add("--lossy-size", type=parse_size, help="bytes per run through the proxy, default 4M (quick: 512K)")
    add("--losses", type=losses, help="loss shares through the proxy, default 0,0.01,0.05,0.2 (quick: 0,0.05)")
    add("--max-seconds", type=float, help="cut each run after this long, default 120 (quick: 30)")
    add("--only", type=lambda s: s.split(","), help="only these contenders (raw, raw-paced, tcp, aioquic, stream) "
        "and/or the memory run (memory), e.g. raw,stream")
    add("--memory", action=argparse.BooleanOptionalAction, help="the memory run: --memory-size over the stream on "
        "loopback, each end's peak RSS (default: on, except with --quick or an --only without 'memory')")
    add("--memory-size", type=parse_size, default=2 << 30, help="bytes for the memory run, default 2G")
    add("--quick", action="store_true", help="the smoke run's small sizes")
    add("--json", action="store_true", help="print one JSON document instead of the table")
    add("--strict", action="store_true", help="exit 1 when a target failed")
    args = parser.parse_args(argv)
    if args.memory is None:
        args.memory = "memory" in args.only if args.only else not args.quick
    defaults = ((8 << 20, 512 << 10, [0.0, 0.05], 30.0) if args.quick else (256 << 20, 4 << 20,
                                                                            [0.0, 0.01, 0.05, 0.2], 120.0))
    for name, value in zip(("size", "lossy_size", "losses", "max_seconds"), defaults):
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def rmem_max():
    try:
        with open("/proc/sys/net/core/rmem_max") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    procs.exit_on_signals()
    bench, report = procs.run("udp_bench", lambda progress: Bench(args, progress))
    report.update({
        "config": {"size": args.size, "lossy_size": args.lossy_size, "losses": args.losses,
                   "max_seconds": args.max_seconds, "link": LINK, "link_rate": LINK_RATE,
                   "memory_size": args.memory_size, "titles": {c.name: c.title for c in contenders()}},
        "cores": os.cpu_count(), "revision": procs.revision(str(HERE.parent)), "rmem_max": rmem_max(),
    })
    return procs.verdict(report, udp_report.checks, udp_report.notes, args, udp_report.table)


if __name__ == "__main__":
    sys.exit(main())
