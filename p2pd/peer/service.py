"""The peer process: TLS listener for peer links, UDP port, control socket, presence and the daemon, as child
services of one MultiService built from the parsed options."""

import ctypes
import json
import os
import socket
import sys
from urllib.parse import urlsplit

import treq
from twisted.application import service
from twisted.internet import defer, endpoints, protocol
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web.client import HTTPConnectionPool

from p2pd.datadir import DataDirLock
from p2pd.errors import P2PDError
from p2pd.peer import identity as identity_mod
from p2pd.peer.control import ControlFactory, control_endpoint, release_stale_socket
from p2pd.peer.daemon import PeerDaemon
from p2pd.peer.link import PeerLink
from p2pd.peer.presence import Presence
from p2pd.peer.registry_client import RegistryClient
from p2pd.peer.storage import Storage
from p2pd.peer.files.manager import Transfers
from p2pd.peer.net.demux import DemuxFactory
from p2pd.peer.net.tcp_paths import TCPDataPaths
from p2pd.peer.threads import ReactorThreads
from p2pd.registry import stun
from p2pd.listening import ListeningService, UDPService, describe_port

log = Logger()


def local_address_towards(host):
    """The local IP the kernel would use to reach *host* (no packet is sent)."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((host, 9))
            return s.getsockname()[0]
    except OSError:
        return None


def host_port(host, port):
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


class TLSAdapter:
    """How the daemon dials with TLS and reads the key a peer proved in the handshake."""

    def __init__(self, identity, clock):
        self.identity = identity
        self.clock = clock
        self.client_options = identity_mod.client_tls_options(identity)

    def client_endpoint(self, reactor, host, port, timeout):
        plain = endpoints.HostnameEndpoint(reactor, host, port, timeout=timeout)
        return endpoints.wrapClientTLS(self.client_options, plain)

    def peer_key(self, transport):
        return identity_mod.peer_key(transport, self.clock.seconds())


class UDPPort(protocol.DatagramProtocol):
    """The peer's UDP port. It is registered now so that peers learn it; the file/image stream that will use
    it counts and drops whatever arrives until then."""

    dropped = 0

    def datagramReceived(self, data, addr):
        self.dropped += 1


def tune_malloc():
    """Let glibc keep and reuse the 1-4 MiB buffers file transfers allocate, instead of mapping fresh pages for
    each one (above 128 KiB it uses mmap by default) and faulting them in again: on this project's 2-core VM
    that halved the CPU a daemon spends sending 1 GiB. Buffers up to 64 MiB come from the heap, which is given
    back to the system once 256 MiB at its top are free. A no-op where mallopt does not exist (not glibc)."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 64 << 20)) and bool(mallopt(m_trim_threshold, 256 << 20))


class PeerService(service.MultiService):
    def __init__(self, options, reactor):
        super().__init__()
        tune_malloc()
        self.options = options
        self.reactor = reactor
        self.name = options["name"]
        self.data_dir = options["data-dir"]
        self.lock = DataDirLock(self.data_dir, "peer.lock", "p2pd daemon")
        self.fatal = None
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        self.identity = identity_mod.load_or_create(self.data_dir, self.name)
        self.storage = Storage(os.path.join(self.data_dir, "p2pd.sqlite3"), name=self.name)
        pool = HTTPConnectionPool(reactor)
        pool.maxPersistentPerHost = 16  # room posts each ask the registry for the member list
        self.registry = RegistryClient(options["registry"], reactor, _TreqWithPool(pool), self.identity.signing,
                                       self.name)
        self.daemon = PeerDaemon(self.name, self.identity, self.storage, self.registry, reactor,
                                 TLSAdapter(self.identity, reactor), self.data_dir)
        self.data_paths = TCPDataPaths(reactor)
        self.daemon.transfers = Transfers(self.name, self.storage, reactor, ReactorThreads(reactor), self.daemon,
                                          self.daemon, self.daemon, self.data_paths, options["inbox"],
                                          share=options["share"], policy=options["accept"],
                                          accept_from=options["accept-from"], accept_max=options["accept-max"])
        links = protocol.Factory.forProtocol(lambda: PeerLink(self.daemon, reactor))
        server_tls = identity_mod.server_tls_options(self.identity)
        tls = TLSMemoryBIOFactory(server_tls, False, links)
        self.listener = ListeningService(reactor, options["listen"], DemuxFactory(tls, self.data_paths, reactor))
        self.listener.setServiceParent(self)
        self.udp = UDPService(reactor, options["udp"], UDPPort(), options["udp-interface"])
        self.udp.setServiceParent(self)
        self.control = ListeningService(reactor, control_endpoint(self.data_dir), ControlFactory(self.daemon, reactor=reactor))
        self.control.setServiceParent(self)
        self.presence = Presence(self.daemon, self.registry, reactor, self.on_fatal)

    def startService(self):
        try:
            self.lock.acquire()
        except P2PDError as e:
            raise SystemExit("p2pd: " + e.message)
        release_stale_socket(self.data_dir)  # we hold peer.lock: a socket left here is a dead daemon's
        self.daemon.transfers.start()
        super().startService()
        self.daemon.addresses = self.addresses()
        self.daemon.discover = self.discover_public
        self.daemon.start()
        self.presence.setServiceParent(self)
        self.announce()

    @defer.inlineCallbacks
    def stopService(self):
        if self.presence.running:
            yield self.presence.disownServiceParent()
        self.daemon.stop()
        yield super().stopService()
        self.storage.commit()
        self.storage.close()

    def addresses(self):
        tcp = self.listener.port.getHost()
        udp = self.udp.port.getHost()
        host = self.options["advertise"]
        if not host:
            bound = tcp.host
            if bound not in ("0.0.0.0", "::"):
                host = bound
            else:
                host = local_address_towards(urlsplit(self.options["registry"]).hostname or "127.0.0.1") \
                    or "127.0.0.1"
        return {"tcp": [host_port(host, tcp.port)], "udp": [host_port(host, udp.port)], "public": None}

    @defer.inlineCallbacks
    def discover_public(self):
        """Ask the registry's STUN responder how the world sees us, and publish that address too when it
        differs from our own (a NAT in between). The mapping is learnt from a fresh UDP port, so the published
        ports assume a port-preserving NAT; the status says which address STUN saw."""
        health = yield self.registry.health()
        port = health.get("stun")
        host = urlsplit(self.options["registry"]).hostname
        if not port or not host:
            return
        try:
            ip = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0][4][0]
        except OSError:
            return
        seen_host, seen_port = yield stun.query(self.reactor, ip, port, timeout=1.0, retries=2)
        addresses = self.daemon.addresses
        addresses["public"] = host_port(seen_host, seen_port)
        for kind, local in (("tcp", self.listener.port.getHost()), ("udp", self.udp.port.getHost())):
            candidate = host_port(seen_host, local.port)
            if candidate not in addresses[kind] and len(addresses[kind]) < 8:
                addresses[kind].append(candidate)
        log.info("STUN: the registry sees us as {seen}", seen=addresses["public"])

    def announce(self):
        info = {"pid": os.getpid(), "name": self.name, "key": self.identity.public_text,
                "tcp": describe_port(self.listener.port), "udp": describe_port(self.udp.port),
                "control": os.path.join(self.data_dir, "control.sock"), "registry": self.options["registry"],
                "addresses": self.daemon.addresses, "data_dir": self.data_dir}
        path = os.path.join(self.data_dir, "peer.json")
        with open(path + ".tmp", "w") as f:
            json.dump(info, f)
        os.replace(path + ".tmp", path)
        log.info("p2pd peer {name} listening: peers tcp {tcp} (TLS), udp {udp}; control socket {control}; "
                 "registry {registry}", **info)

    def on_fatal(self, message):
        """Stop at once with *message* on stderr and exit status 1."""
        if self.fatal:
            return
        self.fatal = message
        log.critical("p2pd: {message}", message=message)
        stderr = sys.__stderr__ or sys.stderr  # twistd points sys.stderr at its log; the user reads the terminal
        stderr.write("p2pd: %s\n" % message)
        stderr.flush()
        self.reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        self.reactor.stop()


class _TreqWithPool:
    """treq's module-level API bound to one connection pool."""

    def __init__(self, pool):
        self.pool = pool

    def request(self, method, url, **kwargs):
        return treq.request(method, url, pool=self.pool, **kwargs)
