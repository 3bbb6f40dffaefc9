"""A closed-loop HTTP/1.1 load generator on asyncio raw sockets, run as its own process by the benchmarks.

    .venv/bin/python benchmarks/loadgen.py SPEC.json      # prints one JSON result on stdout

Each of ``connections`` keep-alive connections sends one request, waits for the whole response (Content-Length
or chunked), records the latency and sends the next: no pipelining, so latency is what one client sees and
throughput is what the server sustains at that concurrency. The requests are ready-made bytes read from a
file (see :func:`write_requests`), so no CPU is spent building or signing them while measuring.

Spec keys:
    host, port, connections
    requests    path of the request file; ``slice``: [i, n] takes every n-th request from the i-th
    mode        "loop": send until the window ends (``reuse``: cycle through the requests, else stop once each
                was sent once); "once": send every request exactly once (used to register peers)
    warmup, duration    seconds of unmeasured then measured load (loop mode)
    start_at    wall-clock time to start sending (several load processes start together), or null
    expect      status codes that count as success; others are counted as errors by status
    watch       {"label": pid}: CPU use of those processes over the measured window, read from /proc
    timeout     hard limit on the whole run, seconds

The result has ``completed`` (responses finished inside the window), ``elapsed`` (the window's length),
``latencies_us`` (of those responses), ``statuses``, ``errors`` (connection failures and unexpected statuses),
``exhausted`` (ran out of single-use requests early) and ``cpu`` (percent of one core for each watched process,
for this load process as ``loadgen`` and for the whole machine, all cores added up, as ``machine``).
"""

import asyncio
import json
import os
import struct
import sys
import time
from collections import Counter

HEADER_END = b"\r\n\r\n"
MAX_RECONNECTS = 1000


def write_requests(path, requests):
    """Store ready-made requests (bytes) as length-prefixed records."""
    with open(path, "wb") as f:
        for request in requests:
            f.write(struct.pack("!I", len(request)))
            f.write(request)


def read_requests(path):
    with open(path, "rb") as f:
        data = f.read()
    requests, pos = [], 0
    while pos < len(data):
        (size,) = struct.unpack_from("!I", data, pos)
        requests.append(data[pos + 4:pos + 4 + size])
        pos += 4 + size
    return requests


def response_length(buf):
    """Length of the first complete HTTP/1.1 response in *buf*, or None while it is incomplete."""
    end = buf.find(HEADER_END)
    if end < 0:
        return None
    head = bytes(buf[:end]).lower()
    body = end + 4
    at = head.find(b"\r\ncontent-length:")
    if at >= 0:
        eol = head.find(b"\r\n", at + 2)
        total = body + int(head[at + 17:eol if eol >= 0 else len(head)])
        return total if len(buf) >= total else None
    if b"\r\ntransfer-encoding: chunked" not in head:
        return body  # no body (the benchmarks never see close-delimited responses)
    pos = body
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
        if size == 0:  # last chunk, then an empty trailer
            end = buf.find(b"\r\n", eol + 2)
            return end + 2 if end >= 0 else None
        pos = eol + 2 + size + 2
        if pos > len(buf):
            return None


def cpu_seconds(pid):
    """User + system CPU seconds of a process so far, or None when it cannot be read (not Linux, gone)."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def machine_busy_seconds():
    """CPU seconds all cores spent busy so far (from /proc/stat), or None when it cannot be read."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    except (OSError, ValueError, IndexError):
        return None


class Load:
    """The shared state of one run: which request is next, the window, and what was measured."""

    def __init__(self, requests, reuse, expect, window_start, window_end):
        self.requests = requests
        self.reuse = reuse
        self.expect = set(expect)
        self.next = 0
        self.window_start = window_start
        self.window_end = window_end
        self.latencies = []
        self.statuses = Counter()
        self.errors = 0
        self.exhausted = False
        self.last_done = None

    def take(self, now):
        if now >= self.window_end:
            return None
        if self.next >= len(self.requests):
            if not self.reuse or not self.requests:
                self.exhausted = True
                return None
            self.next = 0
        request = self.requests[self.next]
        self.next += 1
        return request

    def record(self, status, sent, now):
        if status not in self.expect:
            self.errors += 1
        if self.window_start <= now < self.window_end:
            self.statuses[status] += 1
            self.latencies.append(int((now - sent) * 1e6))
            self.last_done = now


class Client(asyncio.Protocol):
    """One keep-alive connection that keeps exactly one request in flight."""

    def __init__(self, load, closed):
        self.load = load
        self.closed = closed
        self.transport = None
        self.buf = bytearray()
        self.sent = None
        self.finished = False

    def connection_made(self, transport):
        self.transport = transport

    def send(self):
        request = self.load.take(time.perf_counter())
        if request is None:
            self.finished = True
            self.transport.close()
            return
        self.sent = time.perf_counter()
        self.transport.write(request)

    def data_received(self, data):
        self.buf += data
        try:
            size = response_length(self.buf)
        except ValueError:
            size = len(self.buf)
            status = 0
        else:
            if size is None:
                return
            status = int(self.buf[9:12]) if self.buf[:5] == b"HTTP/" else 0
        now = time.perf_counter()
        del self.buf[:size]
        self.load.record(status, self.sent, now)
        self.sent = None
        if self.buf:  # bytes nobody asked for: the connection is out of step, drop it (counted on loss)
            self.transport.close()
            return
        self.send()

    def connection_lost(self, exc):
        if self.sent is not None or not self.finished:
            self.load.errors += 1
        self.closed(self)


async def run(spec):
    loop = asyncio.get_running_loop()
    requests = read_requests(spec["requests"])
    index, count = spec.get("slice") or (0, 1)
    requests = requests[index::count]
    once = spec["mode"] == "once"
    start_at = spec.get("start_at")
    connections = max(1, min(spec["connections"], len(requests))) if once else spec["connections"]

    # Connect everybody first; the clock starts when all are ready (or at start_at).
    load = Load(requests, reuse=spec.get("reuse", True) and not once, expect=spec.get("expect", [200]),
                window_start=float("inf"), window_end=float("inf"))
    open_clients = set()
    reconnects = 0
    all_closed = loop.create_future()

    def closed(client):
        nonlocal reconnects
        open_clients.discard(client)
        if not client.finished and reconnects < MAX_RECONNECTS and time.perf_counter() < load.window_end:
            reconnects += 1
            loop.create_task(connect(start=True))
        elif not open_clients and not all_closed.done():
            all_closed.set_result(None)

    async def connect(start=False):
        try:
            _, client = await loop.create_connection(lambda: Client(load, closed), spec["host"], spec["port"])
        except OSError:
            load.errors += 1
            if not open_clients and not all_closed.done():
                all_closed.set_result(None)
            return None
        open_clients.add(client)
        if start:
            client.send()
        return client

    clients = [c for c in await asyncio.gather(*(connect() for _ in range(connections))) if c is not None]
    if start_at is not None:
        await asyncio.sleep(max(0.0, start_at - time.time()))
    begin = time.perf_counter()
    if once:
        load.window_start, load.window_end = begin, begin + spec["timeout"]
    else:
        load.window_start = begin + spec.get("warmup", 0.0)
        load.window_end = load.window_start + spec["duration"]

    watch = {label: pid for label, pid in (spec.get("watch") or {}).items() if pid}
    cpu_at = {}

    def sample(key):
        cpu_at[key] = {label: cpu_seconds(pid) for label, pid in watch.items()}
        cpu_at[key]["loadgen"] = time.process_time()
        cpu_at[key]["machine"] = machine_busy_seconds()
        cpu_at[key]["wall"] = time.perf_counter()

    if not once:
        loop.call_at(loop.time() + (load.window_start - time.perf_counter()), sample, "start")
    for client in clients:
        client.send()
    if not clients and not all_closed.done():
        all_closed.set_result(None)
    if not once:
        await asyncio.sleep(max(0.0, load.window_end - time.perf_counter()))
        sample("end")
    try:
        remaining = max(1.0, load.window_end - time.perf_counter())
        await asyncio.wait_for(asyncio.shield(all_closed), timeout=remaining + 5)
    except asyncio.TimeoutError:
        load.errors += len(open_clients)  # still waiting for an answer: count those as failures
        for client in list(open_clients):
            client.finished = True
            client.transport.abort()

    if once:
        elapsed = (load.last_done or begin) - begin
    elif load.exhausted and load.last_done is not None:
        elapsed = load.last_done - load.window_start
    else:
        elapsed = spec["duration"]
    cpu = {}
    if "start" in cpu_at and "end" in cpu_at:
        wall = cpu_at["end"]["wall"] - cpu_at["start"]["wall"]
        for label in list(watch) + ["loadgen", "machine"]:
            a, b = cpu_at["start"].get(label), cpu_at["end"].get(label)
            cpu[label] = round(100.0 * (b - a) / wall, 1) if a is not None and b is not None and wall > 0 else None
    return {
        "completed": len(load.latencies),
        "elapsed": elapsed,
        "latencies_us": load.latencies,
        "statuses": {str(k): v for k, v in sorted(load.statuses.items())},
        "errors": load.errors,
        "exhausted": load.exhausted,
        "connections": len(clients),
        "reconnects": reconnects,
        "cpu": cpu,
    }


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.stderr.write("usage: loadgen.py SPEC.json\n")
        return 2
    with open(argv[0]) as f:
        spec = json.load(f)
    try:
        result = asyncio.run(asyncio.wait_for(run(spec), timeout=spec["timeout"] + 10))
    except KeyboardInterrupt:
        return 130
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
