"""The network-namespace fixture (tests/netns.py) itself: links carry UDP and TCP, child processes run inside,
nft loss and blackouts drop what they say and count it, the NAT kinds map and filter as tests/NETNS.md says, and
nothing is left behind. Needs root (the ``netns`` fixture skips otherwise, saying why); CI runs them."""

import errno
import json
import os
import socket
import subprocess
import threading
import time

import pytest

from tests.netns import PREFIX, LeftBehind, Topology, Unsupported, sh, start_udp_echo

pytestmark = pytest.mark.netns
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def receive_all(sock, quiet=0.2):
    """Every datagram waiting on *sock*, until none comes for *quiet* seconds."""
    got = []
    sock.settimeout(quiet)
    while True:
        try:
            got.append(sock.recv(2048))
        except socket.timeout:
            return got


def bound_udp(ns, port=0, host=None):
    sock = ns.socket()
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)  # room for every datagram a test sends at once
    sock.bind((host or ns.addr, port))
    return sock


def tcp_connection(a, b):
    """A TCP connection from *a* to *b*: (the client's socket, the server's accepted one, the client's address)."""
    server = b.socket(type=socket.SOCK_STREAM)
    server.bind((b.addr, 0))
    server.listen()
    client = a.socket(type=socket.SOCK_STREAM)
    client.settimeout(2)
    client.connect(server.getsockname())
    conn, peer = server.accept()
    server.close()
    return client, conn, peer


def ask(sock, destination, timeout=2):
    """Send one datagram to a udp_echo and return what it says: the source it saw, and its port."""
    sock.settimeout(timeout)
    sock.sendto(b"?", destination)
    reply = json.loads(sock.recv(2048))
    return tuple(reply["source"]), reply["port"]


def test_a_pair_exchanges_udp(netns):
    """The two ends of pair() reach each other by their addresses, both ways."""
    a, b = netns.pair()
    assert (a.addr, b.addr) == ("198.51.100.1", "198.51.100.2")
    sa, sb = bound_udp(a, 4000), bound_udp(b, 4000)
    sa.sendto(b"ping", (b.addr, 4000))
    sb.settimeout(2)
    assert sb.recvfrom(100) == (b"ping", (a.addr, 4000))
    sb.sendto(b"pong", (a.addr, 4000))
    assert receive_all(sa) == [b"pong"]


def test_a_pair_exchanges_tcp(netns):
    """A TCP connection from one end to the other carries bytes both ways."""
    a, b = netns.pair()
    client, conn, peer = tcp_connection(a, b)
    with conn:
        assert peer[0] == a.addr
        client.sendall(b"x" * 100000)
        got = b""
        while len(got) < 100000:
            got += conn.recv(65536)
        conn.sendall(b"done")
        assert client.recv(10) == b"done"


def test_a_child_process_runs_inside_and_stops_by_its_pid(netns):
    """python() starts a callable in a child inside the namespace; stop() ends that pid and nothing else."""
    a, b = netns.pair()
    echo = start_udp_echo(b, [4000])
    assert echo.pid in b.pids() and echo.pid not in a.pids()
    assert ask(bound_udp(a), (b.addr, 4000))[1] == 4000
    b.stop(echo)
    assert echo.returncode is not None and b.pids() == []


def test_a_namespace_has_no_way_out(netns):
    """No namespace has a route past its own links: the host's interfaces are out of reach."""
    a, _ = netns.pair()
    with pytest.raises(OSError) as caught:
        bound_udp(a).sendto(b"x", ("192.0.2.1", 9))
    assert caught.value.errno == errno.ENETUNREACH


@pytest.mark.parametrize("where, direction", [("sender", "out"), ("receiver", "in")])
def test_loss_drops_about_that_share_and_counts_it(netns, where, direction):
    """20% loss on the way out of the sender (or into the receiver) loses about 400 of 2,000 datagrams, and the
    nft counter says exactly how many."""
    a, b = netns.pair()
    impaired = a if where == "sender" else b
    impaired.impair.loss(20, direction)
    sender, receiver = bound_udp(a), bound_udp(b, 4000)
    for i in range(2000):
        sender.sendto(b"%d" % i, (b.addr, 4000))
    received = len(receive_all(receiver))
    dropped = impaired.impair.counters()["loss_" + direction]
    assert received + dropped == 2000
    assert 300 <= dropped <= 500  # 400 expected; the standard deviation is 18


def test_loss_both_ways_and_off_again(netns):
    """loss(N) acts both ways; loss(0) removes it."""
    a, b = netns.pair()
    a.impair.loss(50)
    echo_port = 4000
    start_udp_echo(b, [echo_port])
    sock = bound_udp(a)
    for _ in range(400):
        sock.sendto(b"?", (b.addr, echo_port))
    answers = len(receive_all(sock))
    counted = a.impair.counters()
    assert answers == 400 - counted["loss_out"] - counted["loss_in"]
    assert 60 <= answers <= 140  # a quarter of 400 survive both ways
    a.impair.loss(0)
    for _ in range(100):
        sock.sendto(b"?", (b.addr, echo_port))
    assert len(receive_all(sock)) == 100


def test_blackout_drops_everything_then_nothing(netns):
    """blackout(True) drops every UDP datagram (counting them), blackout(False) lets all through again."""
    a, b = netns.pair()
    sender, receiver = bound_udp(a), bound_udp(b, 4000)
    a.impair.blackout(True)
    for _ in range(200):
        sender.sendto(b"x", (b.addr, 4000))
    assert receive_all(receiver) == []
    assert a.impair.counters()["blackout"] == 200
    a.impair.blackout(False)
    for _ in range(200):
        sender.sendto(b"x", (b.addr, 4000))
    assert len(receive_all(receiver)) == 200
    assert a.impair.dropped() == 200  # the count carries on once the rule is gone


def test_blackout_leaves_tcp_alone(netns):
    """A UDP blackout is UDP only: TCP still connects."""
    a, b = netns.pair()
    b.impair.blackout(True)
    client, conn, _ = tcp_connection(a, b)
    client.sendall(b"still here")
    assert conn.recv(100) == b"still here"
    conn.close()


def test_rate_limits_throughput(netns):
    """rate("16mbit") holds a TCP transfer of 2 MB to about one second."""
    a, b = netns.pair()
    a.impair.rate("16mbit")
    client, conn, _ = tcp_connection(a, b)
    client.settimeout(None)
    started = time.monotonic()
    sender = threading.Thread(target=lambda: (client.sendall(b"x" * (2 << 20)), client.shutdown(socket.SHUT_WR)))
    sender.start()
    total = 0
    while chunk := conn.recv(1 << 16):
        total += len(chunk)
    elapsed = time.monotonic() - started
    sender.join()
    conn.close()
    assert total == 2 << 20
    assert 0.8 < elapsed < 2.0


def test_netem_delay_where_the_kernel_has_it(netns):
    """netem("delay", "50ms") adds 50 ms to a round trip, where sch_netem exists (it does not on every kernel)."""
    a, b = netns.pair()
    try:
        a.impair.netem("delay", "50ms")
    except Unsupported as e:
        pytest.skip(str(e))
    start_udp_echo(b, [4000])
    sock = bound_udp(a)
    started = time.monotonic()
    ask(sock, (b.addr, 4000))
    assert time.monotonic() - started >= 0.05


def nat_mappings(world, lan_port=5000, echo_ports=(4000, 4001)):
    """For each LAN host, the (address, port) every public host saw on every echo port, from one socket."""
    for public in world.public:
        start_udp_echo(public, echo_ports)
    seen = []
    for lan in world.lans:
        sock = bound_udp(lan.host, lan_port, host="0.0.0.0")
        seen.append([ask(sock, (public.addr, port))[0] for public in world.public for port in echo_ports])
    return seen


def test_a_cone_nat_keeps_one_port_preserving_mapping(netns):
    """Behind "cone" NATs each LAN host is seen at one mapping, whichever public host and port it talks to: its
    router's public address and its own port (Linux masquerade keeps the port while it is free)."""
    world = netns.lan_behind_nat("cone", lans=2, public_hosts=2)
    seen = nat_mappings(world)
    for lan, mappings in zip(world.lans, seen):
        assert set(mappings) == {(lan.public_addr, 5000)}


def test_a_symmetric_nat_maps_each_destination_apart(netns):
    """Behind "symmetric" NATs the same socket is seen at a different random port by every destination
    (another port on the same host included); the address is still the router's."""
    world = netns.lan_behind_nat("symmetric", lans=2, public_hosts=2)
    seen = nat_mappings(world)
    for lan, mappings in zip(world.lans, seen):
        assert {addr for addr, _ in mappings} == {lan.public_addr}
        assert len({port for _, port in mappings}) > 1  # all four differ but for a 1-in-5,000 coincidence


@pytest.mark.parametrize("kind", ["cone", "symmetric"])
def test_a_nat_lets_in_only_the_endpoint_it_sent_to(netns, kind):
    """Both kinds filter by address and port: at a mapping made towards one public endpoint, datagrams from
    another host, or from another port of the same host, are dropped."""
    world = netns.lan_behind_nat(kind, lans=1, public_hosts=2)
    start_udp_echo(world.public[0], [4000])
    inside = bound_udp(world.lans[0].host, 5000, host="0.0.0.0")
    mapping, _ = ask(inside, (world.public[0].addr, 4000))
    bound_udp(world.public[1], 4000).sendto(b"stranger", mapping)
    bound_udp(world.public[0], 4001).sendto(b"other port", mapping)
    assert receive_all(inside) == []


@pytest.mark.parametrize("kind, punched", [("cone", True), ("symmetric", False)])
def test_hole_punching_works_between_cones_only(netns, kind, punched):
    """Two LAN hosts that learnt each other's mapping from a public host and send to it get through behind cone
    NATs (the first datagram is dropped, the answer opens the way), not behind symmetric ones."""
    world = netns.lan_behind_nat(kind, lans=2, public_hosts=1)
    start_udp_echo(world.registry, [4000])
    a, b = (bound_udp(lan.host, 5000, host="0.0.0.0") for lan in world.lans)
    map_a, map_b = (ask(s, (world.registry.addr, 4000))[0] for s in (a, b))
    a.sendto(b"a1", map_b)
    b.sendto(b"b1", map_a)
    a.sendto(b"a2", map_b)
    got = (receive_all(a), receive_all(b))
    assert got == (([b"b1"], [b"a2"]) if punched else ([], []))


@pytest.mark.slow
def test_a_registry_runs_in_the_public_namespace(netns, tmp_path):
    """A real registry inside the public host answers HTTP and STUN from behind a NAT, and its STUN responder
    sees the router's public address."""
    from p2pd.core import stun
    from tests.registry_process import RegistryProcess

    world = netns.lan_behind_nat("cone", lans=1)
    host = world.registry.addr
    registry = world.registry.inside(RegistryProcess(tmp_path / "reg", args=[
        "--http", "tcp:0:interface=%s" % host, "--stun", "%s:0" % host]))
    registry.start()
    try:
        lan = world.lans[0].host
        http = lan.socket(type=socket.SOCK_STREAM)
        http.settimeout(5)
        http.connect((host, registry.http_port))
        http.sendall(b"GET /v1/health HTTP/1.0\r\nHost: registry\r\n\r\n")
        assert http.makefile("rb").readline().split()[1] == b"200"
        udp = bound_udp(lan, 5000, host="0.0.0.0")
        udp.settimeout(5)
        tid = os.urandom(12)
        udp.sendto(stun.binding_request(tid), registry.stun)
        assert stun.parse_binding_success(udp.recv(2048), tid) == (world.lans[0].public_addr, 5000)
    finally:
        registry.stop()


def host_state():
    """What the host itself has: its links (veths included), its nft tables, and the namespaces of this process."""
    links = sh(["ip", "-o", "link"]).stdout.splitlines()
    return {"links": sorted(line.split(":")[1].split("@")[0].strip() for line in links),
            "tables": sh(["nft", "list", "tables"]).stdout,
            "mine": sorted(n for n in os.listdir("/run/netns") if n.startswith(PREFIX))}


def test_closing_leaves_nothing_behind(netns):
    """A topology with every kind of part (pair, impairments, NAT world, a child process, sockets) leaves no
    namespace, veth or nft table when it closes, and touches nothing on the host, even when the test fails."""
    before = host_state()
    with pytest.raises(ZeroDivisionError):
        with Topology() as net:
            a, b = net.pair()
            a.impair.loss(10)
            b.impair.blackout(True)
            world = net.lan_behind_nat("symmetric")
            start_udp_echo(world.registry, [4000])
            bound_udp(world.lans[0].host)
            during = host_state()
            assert (during["links"], during["tables"]) == (before["links"], before["tables"])  # never on the host
            assert len(during["mine"]) == len(before["mine"]) + 2 + 6  # a pair; switch, public host, 2 x (NAT, LAN)
            1 / 0
    assert host_state() == before


def test_a_process_it_did_not_start_is_reported(netns):
    """A process started by other means and left running in a namespace makes close() raise LeftBehind
    (the namespace is gone from the list all the same, and the test stops its own process)."""
    net = Topology()
    a, _ = net.pair()
    stray = subprocess.Popen(a.command(["sleep", "30"]))
    try:
        with pytest.raises(LeftBehind, match="sleep 30"):
            net.close(grace=0.2)
        assert a.name not in os.listdir("/run/netns")
    finally:
        stray.kill()
        stray.wait()
