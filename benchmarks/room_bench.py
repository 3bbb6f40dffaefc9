"""One chat room of many member daemons: how fast a room message reaches its last member, and how many room
messages per second the room sustains, side by side with the same deliveries sent one to one.

    .venv/bin/python benchmarks/room_bench.py [--members 30] [--messages 500] [--rate 50] [--window 64]
                                              [--json] [--strict] [--keep]

One run starts, on 127.0.0.1, a registry (embedded Redis) and ``--members`` real peer daemons ``m00``,
``m01``, ... (``twistd -n p2pd --role=peer``, :mod:`tests.peer_process`; started a few at a time). ``m00``, the
sender, creates the room ``bench`` (control ``create``) and every member joins it (``join``). The
benchmark opens a ``watch`` control connection on each receiving member and notes, for every message, the time
its ``{"event": "message"}`` line arrives there (``time.monotonic`` in this one process: every daemon is local,
so a message's arrival time is when its event line reaches the benchmark). Message bodies are unique: phase,
sequence number, addressee and the send time. After an unmeasured warm-up (room messages and one message to
each member, all of them delivered everywhere), four measured phases drive the sender's control socket:

1. room, paced: ``--messages`` ``public`` requests at ``--rate`` per second, each timed from writing the request
   until the LAST receiving member has shown the message (the first member's time is given too);
2. room, sustained: ``--messages`` ``public`` requests as fast as the room takes them, ``--window`` of them at a
   time not yet shown by every member: the room messages per second the room sustains (every one delivered to
   every member);
3. one to one, paced: the same deliveries as phase 1 sent as ``msg`` requests (``wait`` set, so each is
   answered once delivered), one to each receiving member per round, ``--messages`` rounds at ``--rate`` rounds
   per second, each round timed until the last of its messages has been shown;
4. one to one, sustained: as phase 2, in rounds of one ``msg`` per member, ``--window`` rounds in flight.

Every member must show every message of every phase exactly once and in the order it was sent; the sender's
outbox must be empty at the end. It prints a table with PASS/FAIL against the target of the rooms issue (p99
until the last member under 250 ms at 50 room messages per second, with 30 members), the CPU each part used
(the other processes' share says how busy the machine was), and the sender's peak memory. Every process it
starts is stopped by its pid on exit, error or Ctrl-C; the temporary directory is removed unless ``--keep``.

Exit status: 0 when the benchmark ran (whatever the verdict; 1 with ``--strict`` when a check failed),
2 when it could not run, 130 when interrupted.
"""

import argparse
import asyncio
import collections
import concurrent.futures
import json
import os
import pathlib
import shutil
import signal
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import procs  # noqa: E402  (benchmarks/ is the script's dir)
from line_echo import CPUMeter, percentile  # noqa: E402

from tests.peer_process import ControlError, PeerProcess  # noqa: E402
from tests.registry_process import RegistryProcess  # noqa: E402

ROOM = "bench"
P99_TARGET_MS = 250.0   # room message until the last member has it, p99
RATE_TARGET = 50.0      # ... at this many room messages per second
MEMBERS_TARGET = 30     # ... in a room of this many member daemons
START_PARALLEL = 4      # daemons starting at the same time
START_TIMEOUT = 90      # seconds one daemon may take to start and register
WARM_UP_POSTS = 5
BODY_SIZE = 64          # characters of every message body
WAIT = 60               # the msg requests' wait: they answer "delivered" once acknowledged
STALL_TIMEOUT = 60      # seconds without any progress before a phase is given up
IDLE_SECONDS = 2.0      # measured with nothing sent, before the phases
GRACE = 1.0             # seconds to keep watching after the last phase, for late duplicates
SLOWEST = 5             # items listed with their times in the JSON report
MB = 1e6


BenchError = procs.BenchError


def latency_ms(latencies_s) -> dict:
    """p50, p95, p99, max and mean of latencies in seconds, as milliseconds (None when there are none)."""
    ordered = sorted(latencies_s)
    ms = lambda s: None if s is None else round(s * 1000.0, 3)  # noqa: E731
    return {"p50_ms": ms(percentile(ordered, 0.50)), "p95_ms": ms(percentile(ordered, 0.95)),
            "p99_ms": ms(percentile(ordered, 0.99)), "max_ms": ms(ordered[-1] if ordered else None),
            "mean_ms": ms(sum(ordered) / len(ordered) if ordered else None)}


def body(tag, seq, to, sent_at) -> str:
    """A unique message body of BODY_SIZE characters: ``bench TAG SEQ TO t=SEND_TIME ....``."""
    text = "bench %s %06d %s t=%.6f " % (tag, seq, to, sent_at)
    return text + "." * max(0, BODY_SIZE - len(text))


class Phase:
    """One phase: *count* items (room messages, or rounds of one message to each receiver), and when each one
    reached its first and its last receiver."""

    def __init__(self, tag, kind, count, receivers, label):
        self.tag, self.kind, self.count, self.label = tag, kind, count, label
        self.receivers = list(receivers)
        self.sent_at = [None] * count
        self.first_at = [None] * count
        self.done_at = [None] * count
        self.last_member = [None] * count
        self.left = [len(self.receivers)] * count
        self.arrived = {name: [] for name in self.receivers}  # sequence numbers in arrival order
        self.seen = {name: set() for name in self.receivers}
        self.duplicates = 0
        self.misdelivered = 0  # a one-to-one message shown by another member than its addressee, or out of range
        self.completed = 0
        self.replies_due = 0
        self.replies = 0
        self.reply_latency = []  # room: request -> "sent" reply (stored and committed); one to one: -> delivered
        self.statuses = collections.Counter()
        self.errors = []
        self.recipients_wrong = 0
        self.changed = asyncio.Event()

    def arrive(self, name, seq, addressee, at):
        if not 0 <= seq < self.count or (self.kind == "o2o" and addressee != name):
            self.misdelivered += 1
            return
        seen = self.seen[name]
        if seq in seen:
            self.duplicates += 1
            return
        seen.add(seq)
        self.arrived[name].append(seq)
        if self.first_at[seq] is None:
            self.first_at[seq] = at
        self.left[seq] -= 1
        if self.left[seq] == 0:
            self.done_at[seq] = at
            self.last_member[seq] = name
            self.completed += 1
            self.changed.set()

    def reply(self, seq, reply, at):
        self.replies += 1
        if reply.get("ok"):
            result = reply.get("result") or {}
            self.statuses[result.get("status")] += 1
            if self.kind == "room" and len(result.get("recipients") or ()) != len(self.receivers):
                self.recipients_wrong += 1
            if self.sent_at[seq] is not None:
                self.reply_latency.append(at - self.sent_at[seq])
        else:
            self.statuses["error"] += 1
            if len(self.errors) < 5:
                self.errors.append("%s: %s" % (reply.get("error"), reply.get("message")))
        self.changed.set()

    def finished(self):
        return self.completed == self.count and self.replies == self.replies_due

    def delivery(self) -> dict:
        """Whether every receiver showed every item exactly once and in sending order."""
        expected = list(range(self.count))
        missing = sum(self.count - len(seqs) for seqs in self.arrived.values())
        in_order = sum(1 for seqs in self.arrived.values() if seqs == expected)
        orders = {tuple(seqs) for seqs in self.arrived.values()}
        displaced = sum(1 for seqs in self.arrived.values() for i, seq in enumerate(seqs) if i != seq)
        return {"receivers": len(self.receivers), "expected_each": self.count, "missing": missing,
                "duplicates": self.duplicates, "misdelivered": self.misdelivered,
                "receivers_in_order": in_order, "same_order_everywhere": len(orders) <= 1,
                "out_of_place": displaced,
                "ok": missing == 0 and self.duplicates == 0 and self.misdelivered == 0
                and in_order == len(self.receivers)}

    def summary(self, sender_pid=None) -> dict:
        sent = [t for t in self.sent_at if t is not None]
        done = [(s, d) for s, d in zip(self.sent_at, self.done_at) if s is not None and d is not None]
        first = [f - s for s, f in zip(self.sent_at, self.first_at) if s is not None and f is not None]
        span = max(d for _, d in done) - min(sent) if done else None
        per_item = len(self.receivers)  # deliveries per room message / messages per round
        out = {"label": self.label, "kind": self.kind, "items": self.count, "completed": self.completed,
               "messages": self.count * (1 if self.kind == "room" else per_item),
               "deliveries": self.completed * per_item,
               "send_rate": round((len(sent) - 1) / (max(sent) - min(sent)), 1) if len(sent) > 1 and
               max(sent) > min(sent) else None,
               "seconds": round(span, 3) if span else None,
               "rate": round(self.completed / span, 1) if span else None,
               "deliveries_per_s": round(self.completed * per_item / span, 1) if span else None,
               "last": latency_ms([d - s for s, d in done]), "first": latency_ms(first),
               "reply": latency_ms(self.reply_latency), "statuses": dict(self.statuses), "errors": self.errors,
               "recipients_wrong": self.recipients_wrong}
        slowest = sorted((d - s, seq) for seq, (s, d) in enumerate(zip(self.sent_at, self.done_at))
                         if s is not None and d is not None)[-SLOWEST:]
        out["slowest"] = [{"seq": seq, "ms": round(1000 * t, 1), "sent_s": round(self.sent_at[seq] - min(sent), 3),
                           "first_ms": round(1000 * (self.first_at[seq] - self.sent_at[seq]), 1),
                           "last_member": self.last_member[seq]} for t, seq in reversed(slowest)]
        return out


class Bench:
    """The processes of one run; :meth:`close` stops all of them by pid."""

    def __init__(self, args, progress):
        self.args = args
        self.progress = progress
        self.tmp = pathlib.Path(tempfile.mkdtemp(prefix="p2pd-room-bench-"))
        self.registry = None
        self.peers = []
        self.phases = {}
        self.closing = False
        self.lost = []  # receivers whose watch connection closed during the run
        self.idle_cpu = None

    @property
    def sender(self):
        return self.peers[0]

    @property
    def receivers(self):
        return self.peers[1:]

    # processes

    def start(self):
        n = self.args.members
        self.progress("starting a registry and %d peer daemons (m00..m%02d), %d at a time" % (
            n, n - 1, START_PARALLEL))
        began = time.monotonic()
        try:
            self.registry = RegistryProcess(self.tmp / "registry", stun=False)
            self.registry.start()
            self.registry.wait_healthy()
            self.peers = [PeerProcess(self.tmp / ("m%02d" % i), "m%02d" % i, self.registry.http) for i in range(n)]
            self.parallel([lambda p=p: p.start(timeout=START_TIMEOUT) for p in self.peers])
        except (RuntimeError, AssertionError, OSError) as e:
            raise BenchError("the daemons did not start: %s" % e) from None
        started = time.monotonic() - began
        self.progress("  %d daemons up in %.1f s; %s creates room %s, the others join it" % (
            n, started, self.sender.name, ROOM))
        try:
            created = self.sender.ctl("create", room=ROOM)
            joining = self.receivers if self.sender.name in created.get("members", ()) else self.peers
            self.parallel([lambda p=p: p.ctl("join", room=ROOM) for p in joining])  # creating may not join
            rooms = {r["name"]: r for r in self.sender.ctl("groups")}
        except (ControlError, OSError) as e:
            raise BenchError("setting up the room failed: %s" % e) from None
        if rooms.get(ROOM, {}).get("member_count") != n:
            raise BenchError("room %s has %r members, not %d" % (ROOM, rooms.get(ROOM), n))
        return round(started, 1)

    def parallel(self, calls):
        """Run *calls* START_PARALLEL at a time; the first exception is raised once all that started ended."""
        pool = concurrent.futures.ThreadPoolExecutor(START_PARALLEL)
        try:
            for future in [pool.submit(call) for call in calls]:
                future.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # nothing half-started is left for close() to miss

    def close(self):
        """Stop everything this run started (by pid) and remove its files unless --keep; again does nothing."""
        self.closing = True
        for peer in self.peers:  # SIGTERM to all of them first: they stop side by side
            if peer.proc is not None and peer.proc.poll() is None:
                try:
                    peer.proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for peer in self.peers:
            peer.stop()
        if self.registry is not None:
            self.registry.stop()
        self.peers, self.registry = [], None
        if self.tmp is not None:
            if self.args.keep:
                self.progress("kept %s" % self.tmp)
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def cpu_meter(self):
        pids = {"sender": self.sender.pid, "client": os.getpid(), "registry": self.registry.pid}
        pids.update((p.name, p.pid) for p in self.receivers)
        try:
            pids["redis"] = int((self.tmp / "registry" / "redis.pid").read_text().strip())
        except (OSError, ValueError):
            pass
        return CPUMeter(pids)

    def cpu_summary(self, cpu) -> dict:
        """The meter's figures with the receivers added up into ``members`` and Redis into ``registry``."""
        names = {p.name for p in self.receivers}
        members = [v for k, v in cpu.items() if k in names]
        out = {"sender": cpu.get("sender"), "members": round(sum(members), 1) if None not in members else None,
               "registry": None if cpu.get("registry") is None else round(cpu["registry"] + (cpu.get("redis") or 0),
                                                                          1),
               "client": cpu.get("client"), "other": cpu.get("other"), "machine": cpu.get("machine")}
        known = [v for v in members if v is not None]
        out["busiest_member"] = max(known) if known else None
        return out

    # the control connections

    async def connect(self, peer):
        reader, writer = await asyncio.open_unix_connection(peer.control_path, limit=1 << 22)
        return reader, writer

    async def watch(self, peer, reader):
        """Read *peer*'s events: note every benchmark message it shows, with the time its line arrived."""
        name, room = peer.name, ROOM.lower()
        phases, buf = self.phases, b""
        while True:
            data = await reader.read(1 << 18)
            if not data:
                if not self.closing:
                    self.lost.append(name)
                return
            at = time.monotonic()
            *lines, buf = (buf + data).split(b"\n")
            for line in lines:
                if b'"event":"message"' not in line:
                    continue
                msg = json.loads(line).get("message") or {}
                if msg.get("direction") != "in" or msg.get("sender") != self.sender.name:
                    continue
                parts = (msg.get("body") or "").split(" ", 4)
                phase = phases.get(parts[1]) if len(parts) == 5 and parts[0] == "bench" else None
                if phase is None:
                    continue
                if (msg.get("room") or "").lower() != (room if phase.kind == "room" else ""):
                    phase.misdelivered += 1
                    continue
                phase.arrive(name, int(parts[2]), parts[3], at)

    async def read_replies(self, reader):
        """The sender's replies, each handed to the phase (and item) its request belongs to."""
        buf = b""
        while True:
            data = await reader.read(1 << 18)
            if not data:
                if not self.closing:
                    self.lost.append(self.sender.name)
                return
            at = time.monotonic()
            *lines, buf = (buf + data).split(b"\n")
            for line in lines:
                reply = json.loads(line)
                owner = self.pending.pop(reply.get("id"), None)
                if owner is not None:
                    owner[0].reply(owner[1], reply, at)

    def request(self, phase, seq, cmd, **args) -> bytes:
        self.next_id += 1
        self.pending[self.next_id] = (phase, seq)
        phase.replies_due += 1
        return json.dumps(dict(args, id=self.next_id, cmd=cmd), separators=(",", ":")).encode() + b"\n"

    def send_item(self, phase, seq):
        """Write item *seq* of *phase*: one ``public`` request, or one ``msg`` to every receiver at once."""
        now = time.monotonic()
        phase.sent_at[seq] = now
        if phase.kind == "room":
            data = self.request(phase, seq, "public", room=ROOM, text=body(phase.tag, seq, "*", now))
        else:
            data = b"".join(self.request(phase, seq, "msg", to=p.name, text=body(phase.tag, seq, p.name, now),
                                         wait=WAIT) for p in self.receivers)
        self.writer.write(data)

    async def wait_until(self, phase, predicate, what):
        """Wait for *predicate*; BenchError after STALL_TIMEOUT seconds without progress or a lost connection."""
        last = (phase.completed, phase.replies)
        deadline = time.monotonic() + STALL_TIMEOUT
        while not predicate():
            if self.lost:
                raise BenchError("the control connection of %s closed during %s" % (", ".join(self.lost), what))
            phase.changed.clear()
            try:
                await asyncio.wait_for(phase.changed.wait(), max(0.01, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                pass
            now = (phase.completed, phase.replies)
            if now != last:
                last, deadline = now, time.monotonic() + STALL_TIMEOUT
            elif time.monotonic() >= deadline:
                return False
        return True

    async def run_phase(self, tag, kind, count, label, rate=None, window=None, measure=True):
        phase = self.phases[tag] = Phase(tag, kind, count, [p.name for p in self.receivers], label)
        self.progress("%s: %d %s%s" % (label, count, "room messages" if kind == "room" else "rounds of %d messages" %
                                       len(self.receivers), ", %g/s" % rate if rate else ", %d in flight" % window))
        meter = self.cpu_meter().start() if measure else None
        began = time.monotonic()
        for seq in range(count):
            if rate:
                delay = began + seq / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            else:
                if seq - phase.completed >= window:
                    ok = await self.wait_until(phase, lambda: seq - phase.completed < window, label)
                    if not ok:
                        break
            self.send_item(phase, seq)
            if self.writer.transport.get_write_buffer_size() > 1 << 20:
                await self.writer.drain()
        await self.writer.drain()
        complete = await self.wait_until(phase, phase.finished, label)
        cpu = meter.stop() if meter else None
        row = phase.summary()
        row["complete"] = complete
        if not rate:
            row["send_rate"] = None  # the first window goes out at once: only the paced rows have a send rate
        if measure:
            row["cpu_percent"] = self.cpu_summary(cpu)
            row["config"] = {"rate": rate, "window": window}
            self.progress("  until the last member: p50 %s ms, p99 %s ms; %s items/s; %d of %d complete" % (
                row["last"]["p50_ms"], row["last"]["p99_ms"], row["rate"], phase.completed, count))
        elif not complete:
            raise BenchError("%s: %d of %d reached every member (%s)" % (label, phase.completed, count,
                                                                         phase.errors or dict(phase.statuses)))
        return row

    async def measure(self):
        args = self.args
        self.pending, self.next_id = {}, 0
        reader, self.writer = await self.connect(self.sender)
        tasks = [asyncio.ensure_future(self.read_replies(reader))]
        watchers = []
        for peer in self.receivers:
            r, w = await self.connect(peer)
            watchers.append(w)
            w.write(b'{"id":1,"cmd":"watch"}\n')
            try:
                answer = json.loads(await asyncio.wait_for(r.readline(), 30))  # nothing comes before it
            except (asyncio.TimeoutError, ValueError, OSError) as e:
                raise BenchError("%s did not answer watch: %r" % (peer.name, e)) from None
            if not answer.get("ok"):
                raise BenchError("%s refused watch: %s" % (peer.name, answer))
            tasks.append(asyncio.ensure_future(self.watch(peer, r)))
        try:
            self.progress("warming up: %d room messages and one message to each member, not counted" %
                          WARM_UP_POSTS)
            await self.run_phase("w1", "room", WARM_UP_POSTS, "warm-up (room)", window=1, measure=False)
            await self.run_phase("w2", "o2o", 1, "warm-up (one to one)", window=1, measure=False)
            self.progress("idle: %g s with nothing sent, for the daemons' own CPU use" % IDLE_SECONDS)
            meter = self.cpu_meter().start()
            await asyncio.sleep(IDLE_SECONDS)
            self.idle_cpu = self.cpu_summary(meter.stop())
            rows = {}
            rows["room_paced"] = await self.run_phase("r1", "room", args.messages, "room, paced",
                                                      rate=args.rate)
            rows["room_sustained"] = await self.run_phase("r2", "room", args.messages, "room, sustained",
                                                          window=args.window)
            rows["o2o_paced"] = await self.run_phase("o1", "o2o", args.messages, "one to one, paced",
                                                     rate=args.rate)
            rows["o2o_sustained"] = await self.run_phase("o2", "o2o", args.messages, "one to one, sustained",
                                                         window=args.window)
            await asyncio.sleep(GRACE)  # late duplicates would show up now
            delivery = {key: self.phases[tag].delivery() for key, tag in (
                ("room_paced", "r1"), ("room_sustained", "r2"), ("o2o_paced", "o1"), ("o2o_sustained", "o2"))}
        finally:
            self.closing = True
            for w in watchers + [self.writer]:
                w.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return rows, delivery

    def run(self):
        startup = self.start()
        rss_before = procs.proc_status_kb(self.sender.pid, "VmRSS")
        rows, delivery = asyncio.run(self.measure())
        try:
            outbox = self.sender.ctl("status")["outbox"]
        except (ControlError, OSError) as e:
            raise BenchError("the sender did not answer status after the run: %s" % e) from None
        hwm = {p.name: procs.proc_status_kb(p.pid, "VmHWM") for p in self.peers}
        members = [kb for name, kb in hwm.items() if name != self.sender.name and kb is not None]
        memory = {"sender_hwm_mb": mb(hwm[self.sender.name]), "sender_rss_before_mb": mb(rss_before),
                  "sender_rss_after_mb": mb(procs.proc_status_kb(self.sender.pid, "VmRSS")),
                  "members_hwm_max_mb": mb(max(members) if members else None),
                  "members_hwm_mean_mb": mb(sum(members) / len(members) if members else None)}
        return {"startup_seconds": startup, "idle_cpu_percent": self.idle_cpu, "rows": rows, "delivery": delivery,
                "sender_outbox": outbox, "memory": memory}


def mb(kb):
    return None if kb is None else round(kb * 1024 / MB, 1)


def revision() -> str:
    return procs.revision(str(HERE.parent))


# verdict and output


def checks(report):
    cfg, rows, delivery = report["config"], report["rows"], report["delivery"]
    paced = rows["room_paced"]
    p99, achieved = paced["last"]["p99_ms"], paced["send_rate"] or 0.0
    at_target = cfg["members"] >= MEMBERS_TARGET and cfg["rate"] >= RATE_TARGET
    verdict = (p99 is not None and p99 < P99_TARGET_MS and achieved >= 0.95 * RATE_TARGET
               and paced["complete"]) if at_target else None
    value = "%s ms at %.1f/s" % (fmt(p99, "%.1f"), achieved)
    if not at_target:
        value += " (%d members: not the target's)" % cfg["members"] if cfg["members"] < MEMBERS_TARGET else \
            " (below the target's rate)"
    room_ok = all(delivery[k]["ok"] for k in ("room_paced", "room_sustained"))
    o2o_ok = all(delivery[k]["ok"] for k in ("o2o_paced", "o2o_sustained"))

    def counted(keys):
        d = [delivery[k] for k in keys]
        return "%d missing, %d dup, %d/%d in order" % (
            sum(x["missing"] for x in d), sum(x["duplicates"] for x in d),
            sum(x["receivers_in_order"] for x in d), sum(x["receivers"] for x in d))

    statuses_ok = all(not r["errors"] and not r["recipients_wrong"] and set(r["statuses"]) <= {"sent", "delivered"}
                      for r in rows.values())
    return [
        {"check": "room: p99 to last member < %g ms at %g msgs/s" % (P99_TARGET_MS, RATE_TARGET), "value": value,
         "pass": verdict},
        {"check": "room: every member, each message once, in order", "value": counted(
            ("room_paced", "room_sustained")), "pass": room_ok},
        {"check": "1:1: every message once, in order", "value": counted(("o2o_paced", "o2o_sustained")),
         "pass": o2o_ok},
        {"check": "replies sent/delivered, sender outbox empty", "value": "outbox %d" % report["sender_outbox"],
         "pass": statuses_ok and report["sender_outbox"] == 0},
    ]


def fmt(value, pattern):
    return "-" if value is None else pattern % value


def table(report) -> str:
    cfg, rows = report["config"], report["rows"]
    receivers = cfg["members"] - 1
    lines = [
        "p2pd room benchmark: room %r with %d member daemons (m00 sends, %d receive), %d messages per phase; "
        "one-to-one rounds are %d msg requests, one to each receiver" % (ROOM, cfg["members"], receivers,
                                                                          cfg["messages"], receivers),
        "p2pd at %s; %d CPU cores shared by all %d daemons, the registry and this client; load average %s at the "
        "start; daemons up in %.1f s" % (report["revision"], report["cores"], cfg["members"],
                                          "/".join("%.2f" % x for x in report["load_average"]),
                                          report["startup_seconds"]),
        "times run from writing the request to the sender's control socket until a member's watch event line "
        "reached this process (time.monotonic here; every daemon is local)",
        "",
        "%-28s %9s %9s %12s %8s   %8s %8s %8s %8s   %8s %8s" % (
            "row", "sent/s", "done/s", "deliveries/s", "first50", "last p50", "last p95", "last p99", "last max",
            "reply50", "reply99"),
    ]
    labels = {"room_paced": "room, paced %g/s" % cfg["rate"], "room_sustained": "room, %d in flight" % cfg["window"],
              "o2o_paced": "1:1 x%d, paced %g rounds/s" % (receivers, cfg["rate"]),
              "o2o_sustained": "1:1 x%d, %d rounds in flight" % (receivers, cfg["window"])}
    for key, row in rows.items():
        lines.append("%-28s %9s %9s %12s %8s   %8s %8s %8s %8s   %8s %8s" % (
            labels[key], fmt(row["send_rate"], "%.1f"), fmt(row["rate"], "%.1f"),
            fmt(row["deliveries_per_s"], "%.0f"), fmt(row["first"]["p50_ms"], "%.1f"),
            fmt(row["last"]["p50_ms"], "%.1f"), fmt(row["last"]["p95_ms"], "%.1f"),
            fmt(row["last"]["p99_ms"], "%.1f"), fmt(row["last"]["max_ms"], "%.1f"),
            fmt(row["reply"]["p50_ms"], "%.1f"), fmt(row["reply"]["p99_ms"], "%.1f")))
    lines.append("(ms; done/s = room messages (rounds) that reached every receiver per second; first50 = p50 until "
                 "the first receiver; reply = until the sender's reply: room 'sent' = stored, 1:1 = delivered)")
    lines.append("slowest (to the last member; sent at s into the row; first member's ms): " + "; ".join(
        "%s %s ms (%s s; %s ms)" % (key.replace("_", " "), row["slowest"][0]["ms"], row["slowest"][0]["sent_s"],
                                   row["slowest"][0]["first_ms"]) for key, row in rows.items() if row["slowest"]))
    lines += ["", "CPU %% of one core during each row: sender, the %d receivers together (the busiest one), registry "
              "with its Redis, this client, other processes" % receivers]
    for key, c in [("idle", report["idle_cpu_percent"])] + [(k, r["cpu_percent"]) for k, r in rows.items()]:
        lines.append("  %-28s sender %s  members %s (%s)  registry %s  client %s  other %s" % (
            labels.get(key, "idle, nothing sent"), fmt(c["sender"], "%.0f"), fmt(c["members"], "%.0f"),
            fmt(c["busiest_member"], "%.0f"),
            fmt(c["registry"], "%.0f"), fmt(c["client"], "%.0f"), fmt(c["other"], "%.0f")))
    m = report["memory"]
    lines.append("memory: sender peak RSS (VmHWM) %s MB (RSS %s MB before the phases, %s after); receivers' peak "
                 "%s MB max, %s MB mean" % (fmt(m["sender_hwm_mb"], "%.1f"), fmt(m["sender_rss_before_mb"], "%.1f"),
                                            fmt(m["sender_rss_after_mb"], "%.1f"),
                                            fmt(m["members_hwm_max_mb"], "%.1f"),
                                            fmt(m["members_hwm_mean_mb"], "%.1f")))
    lines += procs.verdict_lines(report, "targets:", (50, 36))
    return "\n".join(lines)


def notes(report):
    out = []
    for key, row in report["rows"].items():
        if not row["complete"]:
            out.append("%s: gave up after %d s without progress, %d of %d complete" % (
                key, STALL_TIMEOUT, row["completed"], row["items"]))
        if row["errors"]:
            out.append("%s: error replies, e.g. %s" % (key, "; ".join(row["errors"])))
        others = {k: v for k, v in row["statuses"].items() if k not in ("sent", "delivered")}
        if others:
            out.append("%s: replies other than sent/delivered: %s" % (key, others))
        if row["recipients_wrong"]:
            out.append("%s: %d public replies named another number of recipients" % (key, row["recipients_wrong"]))
        cpu = row["cpu_percent"]
        if cpu["other"] is not None and cpu["other"] > 25:
            out.append("%s: %.0f%% of a core went to other processes: figures may be low" % (key, cpu["other"]))
        if cpu["client"] is not None and cpu["client"] > 70:
            out.append("%s: this client used %.0f%% of a core: it may be part of what limits the rate" % (
                key, cpu["client"]))
        worst = row["slowest"][0] if row["slowest"] else None
        if worst and worst["ms"] > 500 and worst["first_ms"] > 0.8 * worst["ms"]:
            out.append("%s: message %d took %.0f ms and even its first member got it only after %.0f ms: it was "
                       "held up before or in the sender" % (key, worst["seq"], worst["ms"], worst["first_ms"]))
    paced = report["rows"]["room_paced"]
    rate = report["config"]["rate"]
    if paced["send_rate"] is not None and paced["send_rate"] < 0.95 * rate:
        out.append("the paced room phase sent only %.1f of the %g messages per second asked for" % (
            paced["send_rate"], rate))
    for key, d in report["delivery"].items():
        if d["receivers_in_order"] < d["receivers"]:
            out.append("%s: %d of %d receivers showed the messages out of sending order (%d arrivals out of place, "
                       "summed over receivers); %s" % (
                           key, d["receivers"] - d["receivers_in_order"], d["receivers"], d["out_of_place"],
                           "every receiver in the same order" if d["same_order_everywhere"]
                           else "not all receivers in the same order"))
    return out


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--members", type=int, default=30, help="member daemons in the room, the sender included (2-200, default 30)")
    add("--messages", type=int, default=500, help="room messages (one-to-one rounds) per phase (1-100000, "
        "default 500)")
    add("--rate", type=float, default=50.0, help="room messages (rounds) per second in the paced phases "
        "(0.1-10000, default 50)")
    add("--window", type=int, default=64, help="room messages (rounds) in flight in the sustained phases "
        "(1-10000, default 64)")
    add("--json", action="store_true", help="print one JSON document instead of the table")
    add("--strict", action="store_true", help="exit 1 when a check fails")
    add("--keep", action="store_true", help="keep the temporary directory (the daemons' data dirs and logs)")
    args = parser.parse_args(argv)
    for name, low, high in (("members", 2, 200), ("messages", 1, 100000), ("rate", 0.1, 10000),
                            ("window", 1, 10000)):
        if not low <= getattr(args, name) <= high:
            parser.error("--%s must be from %g to %g" % (name, low, high))
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)

    procs.exit_on_signals()
    load = [round(x, 2) for x in os.getloadavg()]
    bench, report = procs.run("room_bench", lambda progress: Bench(args, progress))
    report.update({
        "config": {"members": args.members, "messages": args.messages, "rate": args.rate, "window": args.window,
                   "body_size": BODY_SIZE},
        "cores": os.cpu_count(),
        "load_average": load,
        "revision": revision(),
        "targets": {"p99_ms": P99_TARGET_MS, "rate": RATE_TARGET, "members": MEMBERS_TARGET},
    })
    return procs.verdict(report, checks, notes, args, table)


if __name__ == "__main__":
    sys.exit(main())
