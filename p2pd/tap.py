"""``twistd p2pd``: one Options for both roles, and makeService.

    twistd -n p2pd --role=registry [--http tcp:8000] [--redis URL] [--data-dir DIR] [--stun PORT]
    twistd -n p2pd --role=peer --name=alice ...

Every option can also come from an INI file (``--config FILE``, section ``[registry]`` or ``[peer]``, keys named
like the long options); the command line wins. See ``conf/`` for examples.
"""

import configparser
import os
import re
from urllib.parse import urlsplit

from twisted.internet import endpoints
from twisted.python import usage

from p2pd.core.names import canonical_name
from p2pd.core.sizes import parse_amount
from p2pd.errors import InvalidName

ROLES = ("registry", "peer")


def default_data_dir(role: str, name: str = None) -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "p2pd", name if role == "peer" and name else role)


def check_endpoint(description: str, what: str) -> str:
    from twisted.internet import reactor

    try:
        endpoints.serverFromString(reactor, description)
    except (ValueError, TypeError, KeyError) as e:
        raise usage.UsageError("invalid %s endpoint %r: %s" % (what, description, e))
    return description


USER_HELP = ("Runs one part of p2pd: a registry, where peers find each other by name (twistd -n p2pd "
             "--role=registry), or a peer daemon, which claims a name and talks to other peers (twistd -n p2pd "
             "--role=peer --name=alice --registry http://127.0.0.1:8000; p2pctl drives it, see p2pctl --help). "
             "Options marked 'registry:' or 'peer:' belong to that role. Every option can also come from an INI "
             "file (--config FILE, section [registry] or [peer], keys named like the long options; see conf/); "
             "the command line wins. The pid file goes in the data dir unless --pidfile is given.")


class Options(usage.Options):
    synopsis = "--role=registry|peer [options]"
    longdesc = USER_HELP

    optParameters = [
        ["role", None, None, "registry or peer"],
        ["config", "c", None, "INI config file (sections [registry] and [peer])"],
        ["data-dir", "d", None, "state directory (registry: ~/.local/share/p2pd/registry)"],
        # registry
        ["http", None, "tcp:8000", "registry: HTTP API endpoint (e.g. tcp:8000:interface=127.0.0.1)"],
        ["redis", None, None, "registry: redis://host:port/db of an external Redis (default: embedded)"],
        ["stun", None, "3478", "registry: UDP [HOST:]PORT of the STUN responder; 0 turns it off, HOST:0 picks a free port"],
        ["rate-limit", None, "100/20", "registry: requests per second per client address, READS/WRITES; 0 = off"],
        ["lease-ttl", None, "60", "registry: seconds a registration or heartbeat keeps a peer online"],
        # peer
        ["name", "n", None, "peer: the name to claim"],
        ["registry", None, "http://127.0.0.1:8000", "peer: the registry's URL"],
        ["listen", None, "tcp:0", "peer: endpoint for links from other peers (TLS), e.g. tcp:7000"],
        ["udp", None, "0", "peer: UDP port, [HOST:]PORT (0 = any free port)"],
        ["advertise", None, None, "peer: the address to publish when this machine's own is not the one others reach"],
        ["udp-announce", None, None, "peer: the UDP port to tell peers when a port forward (or a relay) leads to ours"],
        ["share", None, None, "peer: a folder others may list and fetch files from"],
        ["accept", None, "ask", "peer: offered files: ask, auto or deny"],
        ["accept-from", None, None, "peer: with --accept auto, accept only from these peers (comma-separated)"],
        ["accept-max", None, None, "peer: with --accept auto, accept only offers up to this size (e.g. 2G)"],
        ["inbox", None, None, "peer: where received files land (default: DATA_DIR/inbox)"],
        ["limits", None, None, "both: change limits against hostile peers, NAME=VALUE,... (see the README)"],
    ]

    def parseOptions(self, options=None):
        """Bad options end the process with one line on stderr (twistd itself would print to stdout)."""
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            raise SystemExit("twistd p2pd: %s\n(see: twistd p2pd --help)" % (e,))

    def postOptions(self):
        if self["config"]:
            self.apply_config(self["config"])
        role = self["role"]
        if role not in ROLES:
            raise usage.UsageError("--role must be one of: %s" % ", ".join(ROLES))
        getattr(self, "check_" + role)()
        self.pidfile_in_data_dir()

    def pidfile_in_data_dir(self):
        """twistd's pid file goes in the data dir unless given (``--pidfile``): a registry and a peer started in
        the same directory, as the README does, would both want ``./twistd.pid`` ("Another twistd server is
        running") and leave it in the working tree. twistd reads the option after this; it writes the file
        before the service starts, so the data dir is made here."""
        parent = getattr(self, "parent", None)
        if parent is None or parent.get("pidfile") != "twistd.pid":
            return
        os.makedirs(self["data-dir"], mode=0o700, exist_ok=True)
        parent["pidfile"] = os.path.join(self["data-dir"], "twistd.pid")

    def apply_config(self, path):
        parser = configparser.ConfigParser()
        try:
            with open(path, encoding="utf-8") as f:
                parser.read_file(f)
        except (OSError, configparser.Error, UnicodeDecodeError) as e:
            raise usage.UsageError("cannot read config file %s: %s" % (path, e))
        defaults = {long: default for long, _, default, _ in self.optParameters}
        role = self["role"] or parser.get("p2pd", "role", fallback=None)
        self["role"] = role
        if role not in parser:
            return
        for key, value in parser[role].items():
            if key not in defaults or key in ("config", "role"):
                raise usage.UsageError("unknown option %r in section [%s] of %s" % (key, role, path))
            if self[key] == defaults[key]:
                self[key] = value

    def check_registry(self):
        self["data-dir"] = os.path.abspath(self["data-dir"] or default_data_dir("registry"))
        check_endpoint(self["http"], "--http")
        stun = self["stun"]
        host, _, port = stun.rpartition(":")
        if not port.isdigit() or not 0 <= int(port) < 65536:
            raise usage.UsageError("--stun must be a UDP port from 0 to 65535 (optionally HOST:PORT), not %r" % stun)
        # "0" alone turns STUN off; HOST:0 listens on a free port (tests, demos).
        self["stun-enabled"] = stun.strip() not in ("0", "off")
        self["stun-port"], self["stun-interface"] = int(port), host.strip("[]")
        try:
            reads, _, writes = self["rate-limit"].partition("/")
            self["read-rate"], self["write-rate"] = float(reads), float(writes or reads)
            if self["read-rate"] < 0 or self["write-rate"] < 0:
                raise ValueError
        except ValueError:
            raise usage.UsageError("--rate-limit must be READS/WRITES per second, e.g. 100/20 (0 = off)")
        if not self["lease-ttl"].isdigit() or not 5 <= int(self["lease-ttl"]) <= 86400:
            raise usage.UsageError("--lease-ttl must be a whole number of seconds from 5 to 86400")
        self["lease-ttl"] = int(self["lease-ttl"])
        from p2pd.core.limits import LimitsError
        from p2pd.registry.limits import parse_registry_limits
        try:
            self["limits"] = parse_registry_limits(self["limits"])
        except LimitsError as e:
            raise usage.UsageError("--limits: %s" % (e,))
        if self["redis"]:
            from p2pd.registry.redis_client import parse_redis_url

            try:
                parse_redis_url(self["redis"])
            except Exception as e:
                raise usage.UsageError(str(e))

    def check_peer(self):
        if not self["name"]:
            raise usage.UsageError("--name is required for a peer (the name others will find you by)")
        try:
            self["name"] = canonical_name(self["name"])
        except InvalidName as e:
            raise usage.UsageError("--name: " + e.message)
        self["data-dir"] = os.path.abspath(self["data-dir"] or default_data_dir("peer", self["name"]))
        url = urlsplit(self["registry"])
        if url.scheme not in ("http", "https") or not url.hostname:
            raise usage.UsageError("--registry must be an http:// or https:// URL, not %r" % self["registry"])
        try:
            url.port
        except ValueError:
            raise usage.UsageError("--registry has an invalid port: %r" % self["registry"])
        check_endpoint(self["listen"], "--listen")
        host, _, port = self["udp"].rpartition(":")
        if not port.isdigit() or not 0 <= int(port) < 65536:
            raise usage.UsageError("--udp must be a UDP port from 0 to 65535 (optionally HOST:PORT)")
        self["udp"], self["udp-interface"] = int(port), host.strip("[]")
        if self["udp-announce"] is not None:
            if not self["udp-announce"].isdigit() or not 0 < int(self["udp-announce"]) < 65536:
                raise usage.UsageError("--udp-announce must be a UDP port from 1 to 65535")
            self["udp-announce"] = int(self["udp-announce"])
        if self["advertise"] is not None and not re.fullmatch(r"[A-Za-z0-9.:-]{1,253}", self["advertise"]):
            raise usage.UsageError("--advertise must be a host name or IP address")
        if self["share"] is not None:
            self["share"] = os.path.abspath(self["share"])
            if not os.path.isdir(self["share"]):
                raise usage.UsageError("--share %s is not a directory" % self["share"])
        if self["accept"] not in ("ask", "auto", "deny"):
            raise usage.UsageError("--accept must be ask, auto or deny")
        try:
            self["accept-from"] = tuple(canonical_name(n.strip()) for n in (self["accept-from"] or "").split(",")
                                        if n.strip())
        except InvalidName as e:
            raise usage.UsageError("--accept-from: " + e.message)
        if self["accept-max"] is not None:
            self["accept-max"] = parse_size(self["accept-max"], "--accept-max")
        self["inbox"] = os.path.abspath(self["inbox"] or os.path.join(self["data-dir"], "inbox"))
        from p2pd.peer.limits import LimitsError, parse_limits
        try:
            self["limits"] = parse_limits(self["limits"])
        except LimitsError as e:
            raise usage.UsageError("--limits: %s" % (e,))


def parse_size(text, what):
    """``"2G"`` -> 2147483648 (K, M, G, T are powers of 1024; an optional trailing "B" or "iB" is allowed)."""
    try:
        return int(parse_amount(text))
    except ValueError:
        raise usage.UsageError("%s must be a size such as 500M or 2G, not %r" % (what, text)) from None


def makeService(options):
    from twisted.internet import reactor

    if options["role"] == "registry":
        from p2pd.registry.service import RegistryService

        return RegistryService(options, reactor)
    from p2pd.peer.service import PeerService

    return PeerService(options, reactor)
