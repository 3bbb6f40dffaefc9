"""The UDP stream end to end through nftables random loss on a real (virtual) link: two network namespaces joined
by a veth (tests/netns.py), the registry and the sender in one, the receiver in the other, each daemon bound to
its namespace's address. The loss is the kernel's (``numgen random``, UDP only: the TLS link over TCP stays clean),
at the ingress of both ends: the data into the receiver, the ACKs into the sender, one datagram at a time (see
unbatched()). Issue 14, section Tests.

Needs root (the namespaces skip otherwise, saying why); CI runs as root, so it runs there. The times per loss
rate are printed (``-s``).
"""

import os
import statistics
import threading
import time

import pytest

from tests.netns import Topology, unavailable_reason
from tests.peer_process import PeerProcess
from tests.registry_process import RegistryProcess
from tests.test_udp_e2e import MB, photo, send, udp_counters

pytestmark = [pytest.mark.netns, pytest.mark.slow]

LOSSES = [0, 5, 20]
SAMPLES = 3  # 20 MB sends at 0% and at 20% through the bottleneck whose medians are compared
BOTTLENECK = "200mbit"
TIMES = {}  # loss % -> (wall seconds of the 20 MB send without a bottleneck, its data seconds)


def unbatched(ns):
    """Make *ns*'s veth hand its peer one datagram at a time. The daemons send with UDP GSO (up to 54 datagrams a
    sendmsg); a veth passes such a batch on whole, and nft, at either end, sees it as one packet, so a "5%" rule
    would drop 5% of batches: bursts of up to 54. With gso_max_segs 1 the kernel segments the batch before the
    veth (after its egress hook, which still sees it whole), so loss at the *ingress* of the other end is loss
    of single datagrams, as on a wire."""
    ns.ip("link", "set", "dev", ns.devices[0], "gso_max_segs", "1")


class World:
    """The registry and the sender in namespace ``a``, the receiver in ``b``."""

    def __init__(self, net, tmp):
        self.a, self.b = net.pair()
        for ns in (self.a, self.b):
            unbatched(ns)
        host = self.a.addr
        self.registry = self.a.inside(RegistryProcess(tmp / "reg", args=[
            "--http", "tcp:0:interface=%s" % host, "--stun", "%s:0" % host]))
        self.started = [self.registry]
        self.registry.start()  # not `with`: its health check would come from the host
        url = "http://%s:%d" % (host, self.registry.http_port)
        self.receiver = self.peer(self.b, tmp / "bob", "nbob", url, ["--accept", "auto"])
        self.sender = self.peer(self.a, tmp / "alice", "nalice", url)  # started later: it dials the receiver

    def peer(self, ns, data_dir, name, url, extra=()):
        addr = ns.addr
        peer = ns.inside(PeerProcess(data_dir, name, url, args=list(extra) + [
            "--listen", "tcp:0:interface=%s" % addr, "--udp", "%s:0" % addr, "--advertise", addr]))
        self.started.append(peer)
        peer.start()
        return peer

    def stop(self):
        for process in reversed(self.started):
            process.stop()

    def loss(self, percent):
        """*percent* % of UDP datagrams lost each way, each datagram on its own: see unbatched()."""
        for ns in (self.a, self.b):
            ns.impair.loss(percent, "in")

    def clear(self):
        self.loss(0)
        self.a.impair.blackout(False)
        self.a.impair.rate(None)

    def dropped(self):
        """UDP datagrams nft dropped so far: (sender to receiver, receiver to sender)."""
        return self.b.impair.counters()["loss_in"], self.a.impair.counters()["loss_in"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with Topology() as net:
        w = World(net, tmp_path_factory.mktemp("udpnetns"))
        try:
            yield w
        finally:
            w.stop()
            print("\nUDP stream, 20 MB through nft loss, no bottleneck (wall s, data s): %s" % TIMES)


@pytest.fixture
def clean(world):
    """The world with no impairment left over from the test before."""
    world.clear()
    yield world
    world.clear()


def random_file(path, size):
    path.write_bytes(os.urandom(size))
    return path


def timed_send(world, path, **args):
    started = time.monotonic()
    result = send(world.sender, world.receiver, path, **args)  # asserts the landed file's sha256
    return time.monotonic() - started, result


def big_send(world, tmp_path, loss, label=""):
    """20 MB with transport="udp" at *loss* %: (wall seconds, data seconds as the sender measured them)."""
    path = random_file(tmp_path / "data.bin", 20 * MB)
    wall, result = timed_send(world, path, transport="udp")
    assert result["transport"] == "udp", result
    os.unlink(path)
    os.unlink(os.path.join(world.receiver.data_dir, "inbox", "data.bin"))  # the next one lands under that name too
    print("\n%s%d%% loss: 20 MB in %.2f s wall, %.2f s of data" % (label, loss, wall, result["seconds"]))
    return round(wall, 2), result["seconds"]


@pytest.mark.parametrize("loss", LOSSES)
def test_a_file_and_a_jpeg_arrive_identical_through_nft_loss(clean, tmp_path, loss):
    """A 20 MB random file (transport="udp") and a real ~1 MB JPEG (no transport asked: UDP, because it is an
    image) arrive identical at 0%, 5% and 20% random UDP loss both ways; what nft dropped is counted."""
    before = clean.dropped()
    sent_before = udp_counters(clean.sender)
    clean.loss(loss)
    TIMES[loss] = big_send(clean, tmp_path, loss)
    image = photo(tmp_path / ("photo-%d.jpg" % loss), size=(1200, 900), seed=loss)
    assert os.path.getsize(image) > 800_000
    wall, result = timed_send(clean, image)
    assert result["transport"] == "udp", result
    print("%d%% loss: the JPEG (%d bytes) in %.2f s" % (loss, os.path.getsize(image), wall))
    dropped = [now - then for now, then in zip(clean.dropped(), before)]
    sent = udp_counters(clean.sender)
    lost, resent = (sent.get(k, 0) - sent_before.get(k, 0) for k in ("lost_packets", "retransmitted_bytes"))
    print("%d%% loss: nft dropped %s datagrams (data, ACKs); the sender counted %d lost packets, re-sent %d bytes"
          % (loss, dropped, lost, resent))
    assert (min(dropped) > 0) if loss else (dropped == [0, 0]), dropped
    assert resent <= 1.5 * 1200 * dropped[0] + 200_000, (resent, dropped)  # frames again, never whole windows
    counters = udp_counters(clean.receiver)
    assert counters["forged"] == 0 and counters["malformed"] == 0, counters


def test_twenty_percent_loss_takes_at_most_three_times_as_long(clean, tmp_path):
    """Congestion control that does not collapse on random loss: through a 200 Mbit/s bottleneck (tbf on the
    sender's veth, the loss after it), 20 MB at 20% loss takes at most 3x as long as at 0%: the medians of three
    sends each, taken in turns so that a busy machine slows both alike.

    Without a bottleneck (the test above) the lossless send is CPU-bound, about 0.3 s, and a 20% run's time is
    dominated by its probe timeouts (about 15 ms each when the RTT is sub-millisecond, so any scheduling stall of
    either daemon sets one off): those ratios are printed, not asserted, as they ranged from 1.2x to 5x on a
    loaded 2-core VM."""
    clean.a.impair.rate(BOTTLENECK)
    bottleneck = {}
    for _ in range(SAMPLES):
        for loss in (0, 20):
            clean.loss(loss)
            bottleneck.setdefault(loss, []).append(big_send(clean, tmp_path, loss, "%s, " % BOTTLENECK)[1])
    lossless, lossy = (statistics.median(bottleneck[loss]) for loss in (0, 20))
    print("\nthrough %s, median data seconds: %.2f at 0%%, %.2f at 20%% (%.1fx); without it, one send each: %s"
          % (BOTTLENECK, lossless, lossy, lossy / lossless, TIMES))
    assert lossy <= 3 * lossless, bottleneck


class Blackouts(threading.Thread):
    """Every *period* seconds from *first*, all UDP of *ns* dropped for *length* seconds, until stop()."""

    def __init__(self, ns, length=2.0, period=5.0, first=1.0):
        super().__init__(name="blackouts", daemon=True)
        self.ns, self.length, self.period, self.first = ns, length, period, first
        self.halt = threading.Event()
        self.count = 0

    def run(self):
        wait = self.first
        while not self.halt.wait(wait):
            self.ns.impair.blackout(True)
            self.count += 1
            self.halt.wait(self.length)
            self.ns.impair.blackout(False)
            wait = self.period - self.length

    def stop(self):
        self.halt.set()
        self.join(10)
        self.ns.impair.blackout(False)


def test_a_blackout_of_two_seconds_every_five_is_ridden_out(clean, tmp_path):
    """10 MB over a 16 Mbit/s link (about 5 s of data) while all UDP is dropped for 2 s every 5 s, from 1 s:
    it completes, identical, with no abort."""
    impair = clean.a.impair
    impair.rate("16mbit")
    before = impair.counters()["blackout"]
    data = random_file(tmp_path / "blackout.bin", 10 * MB)
    blackouts = Blackouts(clean.a)
    blackouts.start()
    try:
        wall, result = timed_send(clean, data, transport="udp")
    finally:
        blackouts.stop()
    dropped = impair.counters()["blackout"] - before
    print("\nblackouts: 10 MB in %.2f s wall (%.2f s of data), %d blackouts begun, %d packets dropped in them"
          % (wall, result["seconds"], blackouts.count, dropped))
    assert blackouts.count >= 1 and dropped > 0
    assert wall < 20, result  # about 5.2 s of data and 4 s of blackouts: each is ridden out within a probe or two
