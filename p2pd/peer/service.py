"""The peer process: wiring only. Builds the parts (identity, storage, the registry client, chat, files, the
paths that carry them, the control socket, presence), hands each the others it needs, starts and stops them."""

import ctypes
import os
import resource
import socket
import sys
from urllib.parse import urlsplit

import treq
from twisted.application import internet, service
from twisted.internet import defer, endpoints, protocol
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory

from p2pd.datadir import DataDirLock, write_info
from p2pd.errors import P2PDError
from p2pd.listening import bound, describe, start_or_exit, stream_service
from p2pd.peer import identity as identity_mod
from p2pd.peer.control import ControlFactory, control_endpoint, release_stale_socket
from p2pd.peer.daemon import PeerDaemon
from p2pd.peer.nat.stun_client import StunClient
from p2pd.peer.net.udp_port import STUN_BYTES, UDPPort
from p2pd.peer.net.udp_socket import BatchUDPServer
from p2pd.peer.net.udp_stream import ChosenPaths, StreamPort, UDPDataPaths
from p2pd.peer.presence import Presence
from p2pd.peer.registry_client import RegistryClient
from p2pd.peer.storage import Storage, db_path
from p2pd.peer.files.manager import Transfers
from p2pd.peer.net.admission import Admission
from p2pd.peer.net.demux import DemuxFactory
from p2pd.peer.net.tcp_paths import TCPDataPaths
from p2pd.peer.threads import ReactorThreads

log = Logger()


def local_address_towards(host):
    """The local IP the kernel would use to reach *host* (no packet is sent; a host name is looked up, so call
    it from a thread)."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((host, 9))
            return s.getsockname()[0]
    except OSError:
        return None


def host_port(host, port):
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)



class QuietHTTPClientFactory(_HTTP11ClientFactory):
    """The pool's connection factory, without its log line per connection (a heartbeat made one every 20 s)."""

    noisy = False

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


def raise_fd_limit(most=65536):
    """Raise the soft limit on open descriptors to the hard one (at most *most*): the daemon holds one per link,
    data connection and pending handshake, and the usual soft limit of 1,024 is soon reached by a flood."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = most if hard == resource.RLIM_INFINITY else min(hard, most)
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            return soft
        return want
    return soft


class PeerService(service.MultiService):
    """The peer process, as a MultiService of its listeners, presence and parts.

    Constructing it does nothing but remember the options: twistd may fork (without ``-n``) between building the
    service and starting it. ``startService`` takes the data-dir lock first, then opens the identity, the
    database and the inbox, builds the parts and wires them, and only then starts listening."""

    def __init__(self, options, reactor):
        super().__init__()
        self.options = options
        self.reactor = reactor
        self.name = options["name"]
        self.data_dir = options["data-dir"]
        self.lock = DataDirLock(self.data_dir, "peer.lock", "p2pd daemon")
        self.threads = ReactorThreads(reactor)
        self.fatal = None
        self.storage = None
        self.built = False  # True once startService has built every part

    def startService(self):
        tune_malloc()
        raise_fd_limit()
        try:
            os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
            os.chmod(self.data_dir, 0o700)
            self.lock.acquire()
            release_stale_socket(self.data_dir)  # we hold peer.lock: a socket left here is a dead daemon's
            self.build()
            self.transfers.start()  # the inbox, and transfers the last run left running marked interrupted
        except P2PDError as e:
            raise SystemExit("p2pd: " + e.message)
        except OSError as e:
            raise SystemExit("p2pd: cannot use the data dir %s: %s" % (self.data_dir, e.strerror))
        start_or_exit(super().startService)
        self.daemon.start()
        defer.ensureDeferred(self.publish()).addErrback(
            lambda f: self.on_fatal("could not start: %s" % f.getErrorMessage()))

    async def publish(self):
        """Work out the addresses to publish (a name lookup may be involved: in a thread), then register them
        and keep them registered, and write ``peer.json``."""
        # links' hellos tell peers where our UDP streams listen (a forwarded port, if we were told of one)
        self.daemon.udp_port = self.options.get("udp-announce") or bound(self.udp).port
        addresses = await self.addresses()
        if not self.running:
            return
        self.daemon.addresses = addresses
        self.presence.setServiceParent(self)
        self.announce()

    def build(self):
        """Open what the daemon keeps on disk and build its parts and listeners (children of this service)."""
        options, reactor = self.options, self.reactor
        limits = options["limits"]
        self.identity = identity_mod.load_or_create(self.data_dir, self.name)
        self.storage = Storage(db_path(self.data_dir), name=self.name)
        pool = HTTPConnectionPool(reactor)
        pool.maxPersistentPerHost = 16  # room posts each ask the registry for the member list
        pool._factory = QuietHTTPClientFactory  # no "Starting factory ..." in the log for every request
        self.registry = RegistryClient(options["registry"], reactor, _TreqWithPool(pool), self.identity.signing,
                                       self.name)
        self.daemon = PeerDaemon(self.name, self.identity, self.storage, self.registry, reactor,
                                 TLSAdapter(self.identity, reactor), self.data_dir, self.threads,
                                 discover=lambda: defer.ensureDeferred(self.discover_public()), limits=limits)
        self.data_paths = TCPDataPaths(reactor)
        self.udp_port = UDPPort()
        self.streams = StreamPort(reactor, self.udp_port)
        paths = ChosenPaths(tcp=self.data_paths, udp=UDPDataPaths(reactor, self.streams))
        self.daemon.udp_counters = self.streams.counters
        self.transfers = Transfers(self.name, self.storage, reactor, self.threads, self.daemon.events,
                                   self.daemon.commits, self.daemon.dialer, paths, options["inbox"],
                                   share=options["share"], policy=options["accept"],
                                   accept_from=options["accept-from"], accept_max=options["accept-max"],
                                   limits=limits)
        self.daemon.attach(self.transfers)
        expiry = internet.TimerService(3600, self.transfers.expire_partials)
        expiry.clock = reactor
        expiry.setServiceParent(self)
        links = protocol.Factory.forProtocol(self.daemon.new_link)
        server_tls = identity_mod.server_tls_options(self.identity)
        tls = TLSMemoryBIOFactory(server_tls, False, links)
        admission = Admission(reactor, limits.unverified, limits.unverified_per_address,
                              limits.connections_per_second)
        self.listener = stream_service(reactor, options["listen"],
                                       DemuxFactory(tls, self.data_paths, reactor, admission=admission))
        self.listener.setServiceParent(self)
        self.stun = StunClient(reactor, self.udp_port.send, self.udp_port.family)
        self.udp_port.route(STUN_BYTES, self.stun.datagram_received)
        self.udp = BatchUDPServer(options["udp"], self.udp_port, interface=options["udp-interface"], reactor=reactor)
        self.udp.setServiceParent(self)
        self.control = stream_service(reactor, control_endpoint(self.data_dir),
                                      ControlFactory(self.daemon, reactor=reactor))
        self.control.setServiceParent(self)
        self.presence = Presence(self.daemon, self.registry, reactor, self.on_fatal)
        self.built = True

    @defer.inlineCallbacks
    def stopService(self):
        if not self.built:  # it failed before it had every part (the data dir was in use, ...)
            if self.storage is not None:
                self.storage.close()
            return
        if self.presence.running:
            yield self.presence.disownServiceParent()
        self.stun.stop()
        self.daemon.stop()  # and the files part attached to it
        yield super().stopService()
        self.storage.commit()
        self.storage.close()

    async def addresses(self):
        """Our TCP and UDP addresses as others should dial them: ``--advertise``, else the address we are bound
        to, else (bound to every interface) the one the kernel would use towards the registry."""
        tcp = bound(self.listener)
        udp = bound(self.udp)
        host = self.options["advertise"]
        if not host:
            if tcp.host not in ("0.0.0.0", "::"):
                host = tcp.host
            else:
                registry_host = urlsplit(self.options["registry"]).hostname or "127.0.0.1"
                host = await self.threads.run(local_address_towards, registry_host) or "127.0.0.1"
        return {"tcp": [host_port(host, tcp.port)], "udp": [host_port(host, udp.port)], "public": None}

    async def discover_public(self):
        """Ask the registry's STUN responder, from our own UDP socket, how the world sees us, and publish that
        address too when it differs from our own (a NAT in between). The UDP candidate is the mapping of the very
        socket others will reach; the TCP one assumes the NAT keeps the port (it cannot be learnt over UDP)."""
        health = await self.registry.health()
        port = health.get("stun")
        host = urlsplit(self.options["registry"]).hostname
        if not port or not host:
            return
        family = socket.AF_INET6 if self.udp_port.family() == 6 else socket.AF_INET
        try:  # in a thread: a name lookup must not block the reactor
            found = await self.threads.run(socket.getaddrinfo, host, port, family, socket.SOCK_DGRAM)
        except OSError as e:
            log.info("STUN: cannot resolve {host}: {error}", host=host, error=e)
            return
        seen_host, seen_port = await self.stun.query(found[0][4][0], port, timeout=1.0, retries=2)
        addresses = self.daemon.addresses
        addresses["public"] = host_port(seen_host, seen_port)
        for kind, candidate in (("udp", host_port(seen_host, seen_port)),
                                ("tcp", host_port(seen_host, bound(self.listener).port))):
            if candidate not in addresses[kind] and len(addresses[kind]) < 8:
                addresses[kind].append(candidate)
        log.info("STUN: the registry sees us as {seen}", seen=addresses["public"])

    def announce(self):
        info = {"pid": os.getpid(), "name": self.name, "key": self.identity.public_text,
                "tcp": describe(bound(self.listener)), "udp": describe(bound(self.udp)),
                "control": os.path.join(self.data_dir, "control.sock"), "registry": self.options["registry"],
                "addresses": self.daemon.addresses, "data_dir": self.data_dir}
        write_info(os.path.join(self.data_dir, "peer.json"), info)
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
