"""The seeded lossy UDP proxy (benchmarks/lossy_proxy.py, issue 14's test bed): each impairment does what it says,
on the pure path (benchmarks/lossy_path.py, plain function calls with ``now``) and through the proxy on a ``Clock``
with fake UDP ports; then the script itself on real loopback sockets."""

import collections
import json
import os
import signal
import socket
import subprocess
import sys

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock

from benchmarks.lossy_path import Impairments, LossyPath
from benchmarks.lossy_proxy import LossyProxy, parse_args, parse_rate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER = ("127.0.0.1", 9000)
CLIENT = ("127.0.0.1", 5000)


def run(path, datagrams, spacing=0.0, start=0.0):
    """Admit *datagrams* every *spacing* s from *start*, then drain: [(time out, datagram)] in order out."""
    out = []
    for i, data in enumerate(datagrams):
        now = start + i * spacing
        drain(path, now, out)
        path.admit(data, now)
        drain(path, now, out)
    drain(path, float("inf"), out)
    return out


def drain(path, until, out):
    """Pop every datagram due by *until*, each at the time it is due."""
    while path.next_deadline() is not None and path.next_deadline() <= until:
        due = path.next_deadline()
        out += [(due, d) for d in path.pop_due(due)]


def numbered(n, size=100):
    return [b"%08d" % i + b"." * (size - 8) for i in range(n)]


def order(out):
    return [int(d[:8]) for _, d in out]


# the path, pure


def test_a_path_by_default_is_a_perfect_wire():
    """No impairment: every datagram comes out at once, unchanged and in order."""
    sent = numbered(100)
    out = run(LossyPath(), sent, spacing=0.001)
    assert [d for _, d in out] == sent
    assert all(t == i * 0.001 for i, (t, _) in enumerate(out))


def test_random_loss_drops_the_configured_share():
    """20% loss over 10,000 datagrams drops 20% of them (within 4 standard deviations) and keeps the order."""
    path = LossyPath(Impairments(loss=0.2), seed=7)
    out = run(path, numbered(10_000))
    dropped = path.stats()["dropped"]["loss"]
    assert abs(dropped - 2000) < 160 and len(out) == 10_000 - dropped
    assert order(out) == sorted(order(out))


def test_burst_loss_follows_the_gilbert_elliott_chain():
    """p=0.01, r=0.25: a long-run loss of p/(p+r) = 3.8%, in bursts of 1/r = 4 datagrams on average."""
    path = LossyPath(Impairments(burst=(0.01, 0.25)), seed=3)
    kept = set(order(run(path, numbered(100_000))))
    lost = [i for i in range(100_000) if i not in kept]
    bursts = 1 + sum(1 for a, b in zip(lost, lost[1:]) if b != a + 1)
    assert path.stats()["dropped"]["burst"] == len(lost)
    assert 0.033 < len(lost) / 100_000 < 0.044
    assert 3.4 < len(lost) / bursts < 4.6


def test_duplication_sends_a_share_twice_right_behind_the_original():
    path = LossyPath(Impairments(duplicate=0.1), seed=1)
    out = order(run(path, numbered(10_000)))
    assert abs(path.stats()["duplicated"] - 1000) < 120 and len(out) == 10_000 + path.stats()["duplicated"]
    assert out == sorted(out) and set(out) == set(range(10_000))


def test_a_delayed_duplicate_comes_that_much_later():
    """duplicate=1, duplicate_delay=0.5: every datagram at once, and its copy 0.5 s later (a replay)."""
    out = run(LossyPath(Impairments(duplicate=1.0, duplicate_delay=0.5)), numbered(10), spacing=0.01)
    times = {}
    for t, d in out:
        times.setdefault(d, []).append(t)
    assert all(len(ts) == 2 and ts[1] - ts[0] == pytest.approx(0.5) for ts in times.values())


def test_corruption_flips_the_given_number_of_bits_in_a_share():
    sent = numbered(10_000)
    path = LossyPath(Impairments(corrupt=0.05, corrupt_bits=3), seed=2)
    out = [d for _, d in run(path, sent)]
    changed = [(a, b) for a, b in zip(sent, out) if a != b]
    assert len(changed) == path.stats()["corrupted"] and abs(len(changed) - 500) < 90
    flips = {sum(bin(x ^ y).count("1") for x, y in zip(a, b)) for a, b in changed}
    assert flips == {3}


def test_delay_and_jitter_spread_the_delays():
    """delay 20 ms + jitter 60 ms, datagrams 100 ms apart: each takes 20..80 ms, spread over that range."""
    out = run(LossyPath(Impairments(delay=0.02, jitter=0.06), seed=4), numbered(2000), spacing=0.1)
    taken = [t - n * 0.1 for (t, _), n in zip(out, order(out))]
    assert min(taken) >= 0.02 - 1e-9 and max(taken) <= 0.08 + 1e-9
    assert 0.045 < sum(taken) / len(taken) < 0.055 and sum(1 for t in taken if t < 0.03) > 250


def test_jitter_alone_never_reorders():
    """Datagrams 1 ms apart with 60 ms of jitter: none overtakes another, so one that drew a short delay waits
    for the one before it (the delays bunch toward the top), and none takes more than 80 ms."""
    out = run(LossyPath(Impairments(delay=0.02, jitter=0.06), seed=4), numbered(2000), spacing=0.001)
    taken = [t - n * 0.001 for (t, _), n in zip(out, order(out))]
    assert order(out) == list(range(2000))
    assert min(taken) >= 0.02 - 1e-9 and max(taken) <= 0.08 + 1e-9


def test_the_bandwidth_limit_delivers_the_rate_and_tail_drops_the_rest():
    """1,250,000 B/s (10 Mbit/s), offered twice that for 10 s: about the rate comes out, about half is dropped
    for the queue, and no more than the queue's 64 KB ever waits."""
    path = LossyPath(Impairments(rate=1_250_000, queue=64 * 1024))
    out = run(path, numbered(20_000, size=1250), spacing=0.0005)  # 2.5 MB/s for 10 s
    delivered = sum(len(d) for t, d in out if t <= 10.0)
    assert delivered == pytest.approx(12_500_000, rel=0.01)
    stats = path.stats()
    assert stats["dropped"]["queue"] == pytest.approx(10_000, rel=0.02)
    assert 60 * 1024 < stats["queue_peak_bytes"] <= 64 * 1024
    assert order(out) == sorted(order(out))


def test_the_token_bucket_lets_a_burst_through_after_idle_time():
    """A 12,000-byte bucket at 1000 B/s: ten 1200-byte datagrams at once leave together, the eleventh 1.2 s
    later."""
    path = LossyPath(Impairments(rate=1000, bucket=12_000, queue=100_000))
    out = run(path, numbered(11, size=1200))
    assert [t for t, _ in out] == [0.0] * 10 + [pytest.approx(1.2)]


def test_reordering_by_depth_holds_a_datagram_behind_up_to_k_later_ones():
    """reorder 10%, depth 3: every datagram arrives; the 10% held back are each overtaken by 1, 2 or 3 later
    datagrams about equally often (a few also by another held one released first); no other is overtaken."""
    path = LossyPath(Impairments(reorder=0.1, reorder_depth=3), seed=5)
    out = order(run(path, numbered(10_000)))
    assert sorted(out) == list(range(10_000))
    place = {n: i for i, n in enumerate(out)}
    overtaken = collections.Counter(sum(1 for m in range(n + 1, min(n + 20, 10_000)) if place[m] < place[n])
                                    for n in range(10_000))
    reordered = path.stats()["reordered"]
    assert abs(reordered - 1000) < 120 and 10_000 - overtaken[0] == reordered
    assert all(abs(overtaken[k] - reordered / 3) < 60 for k in (1, 2, 3))
    assert sum(overtaken[k] for k in overtaken if k > 3) < 0.05 * reordered


def test_reordering_by_delay_lets_later_datagrams_overtake():
    path = LossyPath(Impairments(reorder=0.2, reorder_delay=0.05), seed=6)
    out = run(path, numbered(1000), spacing=0.001)
    late = [(t, n) for (t, _), n in zip(out, order(out)) if t - n * 0.001 > 0.049]
    assert len(late) == path.stats()["reordered"] and abs(len(late) - 200) < 50
    assert all(t == pytest.approx(n * 0.001 + 0.05) for t, n in late)
    assert order(out) != sorted(order(out)) and sorted(order(out)) == list(range(1000))


def test_a_held_datagram_goes_after_the_reorder_timeout_when_nothing_follows():
    path = LossyPath(Impairments(reorder=1.0, reorder_depth=3, reorder_timeout=0.25))
    path.admit(b"only", 1.0)
    assert path.pop_due(1.2) == [] and path.next_deadline() == 1.25
    assert path.pop_due(1.25) == [b"only"]


def test_blackouts_drop_everything_for_x_seconds_every_y():
    """blackout (2, 5): datagrams in [5, 7) and [10, 12) are dropped, all others pass."""
    path = LossyPath(Impairments(blackout=(2, 5)))
    out = run(path, numbered(1300), spacing=0.01)
    kept = set(order(out))
    assert {n for n in range(1300) if n not in kept} == set(range(500, 700)) | set(range(1000, 1200))
    assert path.stats()["dropped"]["blackout"] == 400


def test_the_same_seed_makes_the_same_decisions():
    config = Impairments(loss=0.1, burst=(0.02, 0.3), duplicate=0.05, corrupt=0.05, jitter=0.01, reorder=0.05)
    runs = [run(LossyPath(config, seed=seed), numbered(5000), spacing=0.001) for seed in (11, 11, 12)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_a_stage_draws_from_its_own_generator():
    """Turning jitter and duplication on does not change which datagrams the random loss drops."""
    plain = run(LossyPath(Impairments(loss=0.3), seed=9), numbered(5000))
    more = run(LossyPath(Impairments(loss=0.3, jitter=0.01, duplicate=0.5), seed=9), numbered(5000))
    assert order(plain) == sorted(set(order(more)))


def test_impossible_impairments_are_refused():
    for bad in ({"loss": 1.5}, {"delay": -1}, {"burst": (0.1,)}, {"blackout": (5, 2)}, {"reorder_depth": 0}):
        with pytest.raises(ValueError):
            Impairments(**bad)


# the proxy on a Clock


class FakePort:
    """A UDP port of :class:`UDPClock`: records what is written; ``deliver`` hands it a datagram."""

    def __init__(self, number, protocol, interface):
        self.number, self.protocol, self.interface = number, protocol, interface
        self.written = []
        self.closed = False
        protocol.makeConnection(self)

    def write(self, data, addr):
        assert not self.closed
        self.written.append((data, addr))

    def getHost(self):
        return IPv4Address("UDP", self.interface, self.number)

    def stopListening(self):
        self.closed = True

    def deliver(self, data, addr):
        self.protocol.datagramReceived(data, addr)


class UDPClock(Clock):
    """A Clock that can also ``listenUDP``, on fake ports numbered from 40000."""

    def __init__(self):
        super().__init__()
        self.ports = []

    def listenUDP(self, port, protocol, interface=""):
        self.ports.append(FakePort(port or 40000 + len(self.ports), protocol, interface))
        return self.ports[-1]


def proxy_on_clock(**kwargs):
    clock = UDPClock()
    proxy = LossyProxy(clock, SERVER, **kwargs)
    proxy.start()
    return clock, proxy, clock.ports[0], clock.ports[1]


def test_the_proxy_relays_both_ways_through_its_two_sockets():
    """The client's datagram goes to the server from the upstream port; the reply goes back to the client from
    the listening port."""
    clock, proxy, listening, upstream = proxy_on_clock()
    listening.deliver(b"hello", CLIENT)
    assert upstream.written == [(b"hello", SERVER)]
    upstream.deliver(b"welcome", SERVER)
    assert listening.written == [(b"welcome", CLIENT)]
    stats = proxy.stats()
    assert stats["c2s"]["forwarded"] == stats["s2c"]["forwarded"] == 1 and stats["client"] == "127.0.0.1:5000"


def test_the_proxy_sends_a_delayed_datagram_when_the_clock_gets_there():
    clock, proxy, listening, upstream = proxy_on_clock(c2s=Impairments(delay=0.015))
    listening.deliver(b"a", CLIENT)
    clock.advance(0.014)
    assert upstream.written == []
    clock.advance(0.001)
    assert upstream.written == [(b"a", SERVER)]


def test_the_proxy_delivers_about_the_configured_rate():
    """10 Mbit/s one way, offered 20 Mbit/s for 10 s of Clock time: 12.5 MB come out."""
    clock, proxy, listening, upstream = proxy_on_clock(c2s=Impairments(rate=parse_rate("10mbit")))
    for _ in range(20_000):
        listening.deliver(b"x" * 1250, CLIENT)
        clock.advance(0.0005)
    assert sum(len(d) for d, _ in upstream.written) == pytest.approx(12_500_000, rel=0.01)
    assert proxy.stats()["c2s"]["dropped"]["queue"] == pytest.approx(10_000, rel=0.02)


def test_rebinding_sends_from_a_new_port_and_closes_the_old_one():
    """rebind at 1 s, then every 5 s: the server sees a new source port each time; a reply to a closed port
    is never relayed."""
    clock, proxy, listening, first = proxy_on_clock(rebind_at=1.0, rebind_every=5.0)
    listening.deliver(b"before", CLIENT)
    clock.advance(1.0)
    second = clock.ports[2]
    assert first.closed and not second.closed and second.number != first.number
    listening.deliver(b"after", CLIENT)
    assert first.written == [(b"before", SERVER)] and second.written == [(b"after", SERVER)]
    clock.advance(5.0)
    assert second.closed and len(clock.ports) == 4
    stats = proxy.stats()
    assert stats["rebinds"] == 2 and stats["upstream_ports"] == [p.number for p in clock.ports[1:]]
    second.deliver(b"late reply", SERVER)
    assert listening.written == [] and stats["upstream_port"] == clock.ports[3].number


def test_a_new_client_address_takes_the_replies():
    """The client's port changes (its own NAT rebinding): replies follow the address that sent last."""
    clock, proxy, listening, upstream = proxy_on_clock()
    listening.deliver(b"one", CLIENT)
    listening.deliver(b"two", ("127.0.0.1", 5001))
    upstream.deliver(b"reply", SERVER)
    assert listening.written == [(b"reply", ("127.0.0.1", 5001))]
    assert proxy.stats()["client_changes"] == 1


def test_datagrams_from_anyone_but_the_server_are_stray():
    clock, proxy, listening, upstream = proxy_on_clock()
    listening.deliver(b"one", CLIENT)
    upstream.deliver(b"forged", ("127.0.0.1", 9999))
    assert listening.written == [] and proxy.stats()["stray"] == 1


def test_stopping_closes_both_sockets_and_cancels_the_timers():
    clock, proxy, listening, upstream = proxy_on_clock(c2s=Impairments(delay=1.0), rebind_at=5.0)
    listening.deliver(b"a", CLIENT)
    proxy.stop()
    assert listening.closed and upstream.closed and clock.getDelayedCalls() == []
    assert proxy.stats()["c2s"]["pending"] == 1


def test_the_same_seed_gives_the_same_run_through_the_proxy():
    def one(seed):
        clock, proxy, listening, upstream = proxy_on_clock(c2s=Impairments(loss=0.2, jitter=0.005), seed=seed)
        for i in range(2000):
            listening.deliver(b"%d" % i, CLIENT)
            clock.advance(0.001)
        clock.advance(1)
        return upstream.written, proxy.stats()["c2s"]

    assert one(3) == one(3) and one(3) != one(4)


# the command line


def test_options_for_one_direction_override_those_for_both():
    args = parse_args(["--target", "127.0.0.1:9", "--loss", "0.05", "--s2c-loss", "0.2", "--rate", "10mbit",
                       "--queue", "32K", "--blackout", "2,5"])
    assert args.c2s == Impairments(loss=0.05, rate=1_250_000, queue=32 * 1024, blackout=(2.0, 5.0))
    assert args.s2c.loss == 0.2 and args.s2c.rate == 1_250_000


def test_rates_in_bits_or_bytes():
    assert parse_rate("10mbit") == parse_rate("1.25MB") == parse_rate("1250000") == 1_250_000
    assert parse_rate("800kbit") == 100_000


def test_only_loopback_addresses_are_accepted(capsys):
    for target in ("10.0.0.1:53", "8.8.8.8:53", "localhost:53"):
        with pytest.raises(SystemExit):
            parse_args(["--target", target])
    assert "loopback" in capsys.readouterr().err


@pytest.mark.slow
def test_the_script_relays_on_loopback_and_reports_its_counters(tmp_path):
    """``lossy_proxy.py --loss 0.5``: one JSON line with its port, counters on SIGUSR1, the final counters
    (also in the stats file) on SIGTERM, exit 0."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(5)
    stats_file = tmp_path / "stats.json"
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "benchmarks", "lossy_proxy.py"), "--target",
                             "127.0.0.1:%d" % server.getsockname()[1], "--loss", "0.5", "--seed", "1",
                             "--stats-file", str(stats_file)], stdout=subprocess.PIPE, text=True)
    try:
        port = json.loads(proc.stdout.readline())["port"]
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i in range(200):
            client.sendto(b"%d" % i, ("127.0.0.1", port))
        client.sendto(b"last", ("127.0.0.1", port))
        proc.send_signal(signal.SIGUSR1)
        live = json.loads(proc.stdout.readline())
        proc.send_signal(signal.SIGTERM)
        final = json.loads(proc.stdout.readline())
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        server.close()
        client.close()
    assert live["final"] is False and final["final"] is True
    c2s = final["c2s"]
    assert c2s["received"] == 201 and c2s["forwarded"] + c2s["dropped"]["loss"] == 201
    assert 60 < c2s["dropped"]["loss"] < 140
    assert json.loads(stats_file.read_text()) == final
