"""Real daemons on real (virtual) networks: Linux network namespaces a test creates, wires and always removes.

    with Topology() as net:                               # or the ``netns`` fixture of tests/conftest.py
        a, b = net.pair()                                 # 198.51.100.1 <-> 198.51.100.2 on one veth pair
        a.impair.loss(20)                                 # nft in a's namespace: 20% of its UDP lost both ways
        echo = b.python(udp_echo, b.addr, [4000])         # a child process inside b, stopped by its pid
        s = a.socket()                                    # a socket of this process, living in a's namespace

Names are ``p2pt-<pid>-<n>-<role>``; a topology removes exactly the namespaces it made (their veths, bridges and nft
tables go with them), after stopping the processes it started, by pid. Addresses come from the documentation
ranges (198.51.100.0/24 for pairs, 203.0.113.0/24 for the public side of NATs) and 10.N.0.0/24 behind each NAT;
no namespace has a route to the host's own interfaces. tests/NETNS.md says what this kernel can and cannot do.
"""

import atexit
import ctypes
import functools
import itertools
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = "p2pt-%d-" % os.getpid()
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
CLONE_NEWNET = 0x40000000
IMPAIRMENT_CHAINS = ("loss_in", "loss_out", "blackout")
NAT_KINDS = {"cone": "masquerade", "symmetric": "masquerade fully-random"}
_serial = itertools.count(1)
_open_topologies = set()


class NetnsError(RuntimeError):
    """A command that builds or changes a topology failed; the message has its stderr."""


class Unsupported(NetnsError):
    """This kernel lacks what was asked for (tc netem, for example)."""


class LeftBehind(NetnsError):
    """Processes the test did not stop were still inside a namespace when it was removed."""


def tool(name):
    """The path of *name* (ip, nft, tc), looked for in /usr/sbin and /sbin too."""
    return shutil.which(name, path=SBIN_PATH)


def sh(argv, input=None, check=True, timeout=10, error=NetnsError):
    """Run *argv* to completion; *error* (with its stderr) if it fails and *check*."""
    argv = [tool(argv[0]) or argv[0]] + list(argv[1:])
    try:
        done = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise error("%s is not installed (./dev test installs iproute2 and nftables as root)" % argv[0])
    if check and done.returncode != 0:
        raise error("%s: %s" % (" ".join(argv), done.stderr.strip() or "exit %d" % done.returncode))
    return done


@functools.cache
def unavailable_reason():
    """Why namespace tests cannot run here (not root, no usable ``ip netns``), or None when they can."""
    if os.geteuid() != 0:
        return "network-namespace tests need root (they create namespaces, veth pairs and nft tables)"
    if not tool("ip"):
        return "iproute2's ip is not installed"
    probe = "%sprobe" % PREFIX
    made = sh(["ip", "netns", "add", probe], check=False)
    if made.returncode != 0:
        return "ip netns is not usable here: %s" % made.stderr.strip()
    sh(["ip", "netns", "del", probe], check=False)
    return None


@functools.cache
def _libc_setns():
    return ctypes.CDLL(None, use_errno=True).setns


def in_namespace(name, fn):
    """Call *fn* on a short-lived thread that has joined namespace *name*; what it creates (sockets) stays there."""
    result = {}

    def run():
        try:
            fd = os.open("/run/netns/%s" % name, os.O_RDONLY)
            try:
                if _libc_setns()(fd, CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, "setns(%s): %s" % (name, os.strerror(errno)))
                result["value"] = fn()
            finally:
                os.close(fd)
        except BaseException as e:  # handed to the caller's thread
            result["error"] = e

    thread = threading.Thread(target=run, name="netns-" + name)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


class Namespace:
    """One network namespace: its devices and addresses, the processes and sockets it holds, its impairments."""

    def __init__(self, role=""):
        self.name = PREFIX + str(next(_serial)) + ("-" + role if role else "")
        self.addresses = {}  # device -> IPv4 address (no prefix length), in the order they were added
        self.devices = []  # every veth end in here, addressed or not (a bridge port)
        self.procs = []
        self.sockets = []
        self.impair = Impairments(self)
        sh(["ip", "netns", "add", self.name])
        try:
            self.ip("link", "set", "lo", "up")
        except NetnsError:
            sh(["ip", "netns", "del", self.name], check=False)
            raise

    def __repr__(self):
        return "<Namespace %s %s>" % (self.name, " ".join(self.addresses.values()))

    @property
    def addr(self):
        """The first address given to this namespace (the one its peers reach it on)."""
        if not self.addresses:
            raise ValueError("%s has no address" % self.name)
        return next(iter(self.addresses.values()))

    def ip(self, *args):
        return sh(["ip", "-n", self.name] + list(args))

    def command(self, argv):
        """*argv* prefixed to run inside this namespace (its program found on PATH, /usr/sbin or /sbin)."""
        argv = [str(a) for a in argv]
        return [tool("ip") or "ip", "netns", "exec", self.name, tool(argv[0]) or argv[0]] + argv[1:]

    def run(self, argv, check=True, timeout=10, input=None):
        """Run *argv* inside the namespace to completion (CompletedProcess, text)."""
        return sh(self.command(argv), input=input, check=check, timeout=timeout)

    def nft(self, ruleset):
        """Apply an nft script (``nft -f -``) inside the namespace."""
        return self.run(["nft", "-f", "-"], input=ruleset)

    def sysctl(self, key, value):
        path = "/proc/sys/" + key.replace(".", "/")
        self.run(["sh", "-c", 'echo "$1" > "$2"', "sysctl", str(value), path])

    def popen(self, argv, **kwargs):
        """Start *argv* inside the namespace, in its own session (``ip netns exec`` execs, so the Popen's pid is the
        command's own); stopped by that pid (and its process group) by stop() or when the topology closes."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen(self.command(argv), **kwargs)
        self.procs.append(proc)
        return proc

    def python(self, func, *args, **kwargs):
        """Start ``func(*args)`` in a child Python inside the namespace. *func* is a module-level function its child
        can import (tests.netns.udp_echo, say); *args* must be JSON. Its stdout is a text pipe unless told."""
        code = "import importlib, json, sys; getattr(importlib.import_module(sys.argv[1]), sys.argv[2])" \
               "(*json.loads(sys.argv[3]))"
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("text", True)
        kwargs.setdefault("cwd", ROOT)
        return self.popen([sys.executable, "-c", code, func.__module__, func.__qualname__, json.dumps(list(args))],
                          **kwargs)

    def inside(self, process):
        """Make *process* (a TwistdProcess, or anything whose command() gives its argv) start inside this namespace;
        the object keeps starting and stopping it by pid, as it does outside."""
        command = process.command
        process.command = lambda: self.command(command())
        return process

    def stop(self, proc, timeout=5):
        """SIGTERM the process group of a process popen() started (its pid), SIGKILL after *timeout*."""
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(5)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe:
                pipe.close()
        if proc in self.procs:
            self.procs.remove(proc)

    def socket(self, family=socket.AF_INET, type=socket.SOCK_DGRAM):
        """A socket of this process in the namespace (closed when the topology closes, if not before)."""
        sock = in_namespace(self.name, lambda: socket.socket(family, type))
        self.sockets.append(sock)
        return sock

    def pids(self):
        """Pids of every process inside the namespace (``ip netns pids``)."""
        return [int(p) for p in sh(["ip", "netns", "pids", self.name], check=False).stdout.split()]

    def close(self, grace=3):
        """Stop what was started here, close its sockets, wait up to *grace* seconds for other processes inside to
        end, remove the namespace. Returns a description of those still inside (they keep it alive, nameless)."""
        for proc in list(self.procs):
            self.stop(proc)
        for sock in self.sockets:
            sock.close()
        self.sockets = []
        deadline = time.monotonic() + grace
        while (left := self.pids()) and time.monotonic() < deadline:
            time.sleep(0.05)
        sh(["ip", "netns", "del", self.name], check=False)
        if left:
            return "%s: %s" % (self.name, ", ".join("%d %s" % (pid, _cmdline(pid)) for pid in left))
        return None


def _signal_group(proc, signum):
    try:
        os.killpg(proc.pid, signum)  # popen() made it a session leader: its group id is its pid
    except (ProcessLookupError, PermissionError):
        try:
            proc.send_signal(signum)
        except ProcessLookupError:
            pass


def _cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "(gone)"


class Impairments:
    """Packet loss, blackouts and rate limits inside one namespace, with nftables and tc.

    nft rules sit in table ``netdev p2pt``, at the ingress and egress hooks of each veth (never loopback): what
    arrives is dropped before conntrack sees it, what leaves after routing and NAT, as a lossy wire would, so they
    act the same on a host and on a router. A drop at egress is silent, like real loss: sendto() does not fail
    (an output-hook drop would give it EPERM). Each change replaces the rule it concerns; the counters carry on
    across changes (exactly, when no traffic flows during one)."""

    def __init__(self, ns):
        self.ns = ns
        self.hooked = []  # devices whose ingress and egress jump to the shared chains
        self.earlier = dict.fromkeys(IMPAIRMENT_CHAINS, 0)  # drops counted by rules since replaced

    def _apply(self, chain, rule):
        if self.hooked:
            self.earlier[chain] += self._in_place()[chain]
        script = "add table netdev p2pt\n" + "".join("add chain netdev p2pt %s\n" % c for c in IMPAIRMENT_CHAINS)
        for dev in self.ns.devices:
            if dev not in self.hooked:
                for hook, where in (("ingress", "in"), ("egress", "out")):
                    base = "%s_%s" % (where, dev)
                    script += ("add chain netdev p2pt %s { type filter hook %s device \"%s\" priority 0; }\n"
                               "add rule netdev p2pt %s jump blackout\nadd rule netdev p2pt %s jump loss_%s\n"
                               % (base, hook, dev, base, base, where))
        script += "flush chain netdev p2pt %s\n" % chain
        if rule:
            script += "add rule netdev p2pt %s %s\n" % (chain, rule)
        self.ns.nft(script)
        self.hooked = list(self.ns.devices)

    def loss(self, percent, direction="both", proto="udp"):
        """Drop *percent* % of *proto* packets ("udp", "tcp" or None for all IP) at random, on the way in, out or
        both (``numgen random mod 100``); 0 removes the loss."""
        if direction not in ("in", "out", "both"):
            raise ValueError("direction is in, out or both, not %r" % direction)
        if not 0 <= percent <= 100:
            raise ValueError("loss is a percentage, not %r" % percent)
        rule = "%snumgen random mod 100 < %d counter drop" % (_match(proto), percent) if percent else None
        for chain in (["loss_in", "loss_out"] if direction == "both" else ["loss_" + direction]):
            self._apply(chain, rule)

    def blackout(self, on=True, proto="udp"):
        """Drop every *proto* packet both ways while on; off lets everything through again."""
        self._apply("blackout", "%scounter drop" % _match(proto) if on else None)

    def counters(self):
        """Packets dropped so far: {"loss_in": n, "loss_out": n, "blackout": n}, from ``nft -j`` counters."""
        now = self._in_place()
        return {chain: self.earlier[chain] + now[chain] for chain in IMPAIRMENT_CHAINS}

    def _in_place(self):
        found = dict.fromkeys(IMPAIRMENT_CHAINS, 0)
        if not self.hooked:
            return found
        listing = json.loads(self.ns.run(["nft", "-j", "list", "table", "netdev", "p2pt"]).stdout)
        for item in listing["nftables"]:
            rule = item.get("rule")
            if rule and rule["chain"] in found:
                found[rule["chain"]] += sum(e["counter"]["packets"] for e in rule["expr"] if "counter" in e)
        return found

    def dropped(self):
        """All packets dropped so far, by every rule."""
        return sum(self.counters().values())

    def _device(self, dev):
        if dev is None:
            if len(self.ns.devices) != 1:
                raise ValueError("%s has devices %s: say which" % (self.ns.name, self.ns.devices))
            dev = self.ns.devices[0]
        return dev

    def rate(self, rate, dev=None, queue_ms=50, burst="16kb"):
        """Limit what leaves *dev* to *rate* (tc units: "2mbit") with a token bucket whose queue holds *queue_ms*
        of traffic; beyond that packets are tail-dropped, as at a real bottleneck. None removes the limit."""
        dev = self._device(dev)
        if rate is None:
            self.ns.run(["tc", "qdisc", "del", "dev", dev, "root"], check=False)
            return
        self.ns.run(["tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate, "burst", burst,
                     "latency", "%dms" % queue_ms])

    def netem(self, *params, dev=None):
        """``tc qdisc replace ... root netem PARAMS`` (delay 50ms 10ms, loss 5%, ...); Unsupported where the kernel
        has no sch_netem (as on the 6.18 test VM)."""
        done = self.ns.run(["tc", "qdisc", "replace", "dev", self._device(dev), "root", "netem"] + list(params),
                           check=False)
        if done.returncode != 0:
            raise Unsupported("tc netem is not available here: %s" % done.stderr.strip())


# A home router: masquerade out of "wan"; what arrives new on "wan" for the router itself is dropped before
# conntrack confirms it, so an early hole-punching packet leaves no entry behind that would take the port a later
# outgoing mapping needs (a router answering it, or letting it in, would: see tests/NETNS.md).
ROUTER = """\
table ip p2pt_nat {
    chain post { type nat hook postrouting priority srcnat; oifname "wan" %s; }
    chain input { type filter hook input priority filter; iifname "wan" ct state new counter drop; }
}
"""


def _match(proto):
    """The nft match for *proto* packets: "udp", "tcp", or None for every IP packet (never ARP)."""
    return "meta l4proto %s " % proto if proto else "meta protocol { ip, ip6 } "


@dataclass
class Lan:
    """One NAT'd LAN: its router (``wan`` on the public segment, ``lan`` on 10.N.0.1) and the host behind it."""
    router: Namespace
    host: Namespace

    @property
    def public_addr(self):
        return self.router.addresses["wan"]


@dataclass
class NatWorld:
    """What lan_behind_nat() builds: a public segment (a bridge in ``switch``) with public hosts on it, the first
    one meant for the registry (and relay), and LANs each behind their own NAT router."""
    kind: str
    switch: Namespace
    public: list = field(default_factory=list)
    lans: list = field(default_factory=list)

    @property
    def registry(self):
        return self.public[0]


class Topology:
    """The namespaces of one test and their links; close() (or leaving the ``with``) removes all of them."""

    def __init__(self):
        self.namespaces = []
        self._ports = itertools.count(1)
        _open_topologies.add(self)

    def namespace(self, role=""):
        ns = Namespace(role)
        self.namespaces.append(ns)
        return ns

    def link(self, a, a_cidr, b, b_cidr, a_dev=None, b_dev=None):
        """A veth pair from *a* to *b*, created straight inside them (the host never sees it), addressed and up.
        *a_cidr* / *b_cidr* may be None for a port without an address (a bridge port)."""
        a_dev = a_dev or "eth%d" % len(a.devices)
        b_dev = b_dev or "eth%d" % len(b.devices)
        sh(["ip", "link", "add", a_dev, "netns", a.name, "type", "veth", "peer", "name", b_dev, "netns", b.name])
        for ns, dev, cidr in ((a, a_dev, a_cidr), (b, b_dev, b_cidr)):
            ns.devices.append(dev)
            if cidr:
                ns.ip("addr", "add", cidr, "dev", dev)
                ns.addresses[dev] = cidr.split("/")[0]
            ns.ip("link", "set", dev, "up")
        return a_dev, b_dev

    def pair(self, a_cidr="198.51.100.1/24", b_cidr="198.51.100.2/24", roles=("a", "b")):
        """Two hosts on one link: (a, b), each with loopback and ``eth0``."""
        a, b = self.namespace(roles[0]), self.namespace(roles[1])
        self.link(a, a_cidr, b, b_cidr)
        return a, b

    def lan_behind_nat(self, kind, lans=2, public_hosts=1):
        """Public hosts on 203.0.113.200, .201, ...; *lans* LANs, LAN N (from 1) a router with ``wan``
        203.0.113.N and ``lan`` 10.N.0.1/24 masquerading for a host on 10.N.0.2 whose default route it is.
        *kind* "cone" is plain masquerade (Linux keeps the source port when it can: one mapping for every
        destination); "symmetric" is ``masquerade fully-random`` (a fresh random port per destination)."""
        if kind not in NAT_KINDS:
            raise ValueError("NAT kind is one of %s, not %r" % (sorted(NAT_KINDS), kind))
        switch = self.namespace("switch")
        switch.ip("link", "add", "br0", "type", "bridge")
        switch.ip("link", "set", "br0", "up")
        world = NatWorld(kind, switch)
        for i in range(public_hosts):
            world.public.append(self._on_switch(switch, self.namespace("pub%d" % i), "203.0.113.%d/24" % (200 + i)))
        for n in range(1, lans + 1):
            router = self._on_switch(switch, self.namespace("nat%d" % n), "203.0.113.%d/24" % n, dev="wan")
            host = self.namespace("lan%d" % n)
            self.link(router, "10.%d.0.1/24" % n, host, "10.%d.0.2/24" % n, a_dev="lan", b_dev="eth0")
            host.ip("route", "add", "default", "via", "10.%d.0.1" % n)
            router.sysctl("net.ipv4.ip_forward", 1)
            router.nft(ROUTER % NAT_KINDS[kind])
            world.lans.append(Lan(router, host))
        return world

    def _on_switch(self, switch, ns, cidr, dev=None):
        port = "p%d" % next(self._ports)
        self.link(switch, None, ns, cidr, a_dev=port, b_dev=dev)
        switch.ip("link", "set", port, "master", "br0")
        return ns

    def close(self, grace=3):
        """Remove every namespace made here, last first; LeftBehind if processes it did not start were still inside
        after *grace* seconds."""
        _open_topologies.discard(self)
        left = [leak for ns in reversed(self.namespaces) if (leak := ns.close(grace))]
        self.namespaces = []
        if left:
            raise LeftBehind("processes still inside removed namespaces: " + "; ".join(left))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@atexit.register
def _close_forgotten():
    for topology in list(_open_topologies):
        try:
            topology.close()
        except NetnsError:
            pass


def start_udp_echo(ns, ports, host=None):
    """udp_echo() on *ns*'s address (or *host*) and *ports*, started inside *ns*; returns its Popen once bound."""
    proc = ns.python(udp_echo, host or ns.addr, list(ports))
    if proc.stdout.readline().strip() != "ready":  # its traceback went to the test's stderr
        ns.stop(proc)
        raise NetnsError("udp_echo in %s did not start" % ns.name)
    return proc


def udp_echo(host, ports):
    """Run in a namespace by Namespace.python(): answer each datagram on *host*:*ports* with JSON saying the source
    it came from and the port it reached, ``{"source": [ip, port], "port": p}``. Prints "ready" once bound."""
    selector = selectors.DefaultSelector()
    for port in ports:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((host, port))
        selector.register(sock, selectors.EVENT_READ, port)
    print("ready", flush=True)
    while True:
        for key, _ in selector.select():
            data, source = key.fileobj.recvfrom(2048)
            key.fileobj.sendto(json.dumps({"source": list(source), "port": key.data}).encode(), source)
