"""Authenticated links to peers (:class:`~p2pd.peer.interfaces.IDialer`), reused while they are up, and the
back-off between failed attempts.

A dial looks the peer up (checked against our pin), tries each TCP address it registered with TLS, and succeeds
once the link's handshake proved the peer's key. Concurrent dials to one peer share one attempt.

Only addresses that fit where the registry saw the peer come from (``observed``) are dialled
(:func:`dialable`): a name cannot aim our connections at a host of its choosing. And connection attempts are
paced (``dials_per_second`` of :class:`p2pd.peer.limits.Limits`): a room of many members is dialled at that
pace, never in one burst."""

import ipaddress

from twisted.internet import defer, endpoints, task
from zope.interface import implementer

from p2pd.core.ratelimit import Bucket
from p2pd.errors import IdentityMismatch, LinkFailed, PeerOffline
from p2pd.peer.chat.shared import Shared
from p2pd.peer.interfaces import IDialer
from p2pd.peer.limits import Limits

DIAL_TIMEOUT = 5
RETRY_MIN = 2.0
RETRY_MAX = 60.0


def _ip(host):
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


# Networks a LAN can use (RFC 1918, shared address space, ULA) besides loopback and link-local. Not
# ``is_private``: that also holds for the documentation ranges, which stand for public addresses.
LAN_NETWORKS = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                                                         "100.64.0.0/10", "fc00::/7"))


def _local(ip):
    return ip.is_loopback or ip.is_link_local or any(ip in net for net in LAN_NETWORKS if net.version == ip.version)


def dialable(host, observed, own_observed=None) -> bool:
    """Whether a peer the registry saw coming from *observed* may have us dial *host*, an address it published.

    Its public address is the one the registry saw (a peer behind a NAT publishes what STUN told it, which is
    the same). Addresses of a private network (RFC 1918, ULA, link-local, loopback) are tried when the peer can
    be on ours: the registry saw it from a private or loopback address, or from the same public address as us
    (one NAT). A host name is dialled as published (it is resolved on connecting; the pace of dials bounds it).
    Any other public address is not where the peer is, and is never dialled."""
    ip, seen = _ip(host), _ip(observed or "")
    if ip is None or seen is None:
        return ip is None or not observed  # a host name; or a registry that does not say what it saw
    if ip == seen:
        return True
    if _local(ip):
        return _local(seen) or (own_observed is not None and _ip(own_observed) == seen)
    return False


@implementer(IDialer)
class Dialer:
    """*pins* looks peers up, *tls* makes client endpoints, ``link_factory(expected)`` makes an unconnected link
    that expects ``(name, key)``."""

    def __init__(self, pins, tls, reactor, link_factory, timeout=DIAL_TIMEOUT, limits=None):
        self.pins = pins
        self.tls = tls
        self.reactor = reactor
        self.link_factory = link_factory
        self.timeout = timeout
        rate = (limits or Limits()).dials_per_second
        self.pace = Bucket(rate, rate * 2, reactor.seconds())  # connection attempts, all peers together
        self.own_observed = None  # where the registry sees us come from (set when we register)
        self.links = {}  # peer -> ready link (the newest)
        self.dialing = Shared()  # the dials in progress, by peer
        self.retry_at = {}  # peer -> (next attempt time, backoff)
        self.last_error = {}  # peer -> why the last dial failed
        self.offline_seen = {}  # peer -> "offline"/"unreachable" while its last dial found it so

    def link_to(self, peer):
        return self.links.get(peer)

    def dial(self, peer):
        if peer in self.links:
            return defer.succeed(self.links[peer])
        return self.dialing(peer, lambda: defer.ensureDeferred(self._dial(peer)))

    async def _dial(self, peer):
        self.pins.refuse_blocked(peer)
        record = await self.pins.lookup(peer)
        if not record.get("online"):
            raise PeerOffline("%s is offline" % peer)
        errors = []
        for address in record.get("tcp") or []:
            host, _, port = address.rpartition(":")
            host = host.strip("[]")
            if not dialable(host, record.get("observed"), self.own_observed):
                errors.append("%s: not where the registry saw %s (%s), not dialled" % (address, peer,
                                                                                     record.get("observed")))
                continue
            wait = self.pace.take(1, self.reactor.seconds())
            if wait:
                await task.deferLater(self.reactor, wait, lambda: None)
            link = self.link_factory((peer, record["key"]))
            try:
                endpoint = self.tls.client_endpoint(self.reactor, host, int(port), timeout=self.timeout)
                await endpoints.connectProtocol(endpoint, link)
                await link.when_ready.addTimeout(self.timeout * 2, self.reactor)
                self.pins.pin(peer, record["key"])
                return link
            except IdentityMismatch:
                raise
            except LinkFailed as e:
                if e.code == "identity_mismatch":
                    raise IdentityMismatch(e.message) from None
                errors.append("%s: %s" % (address, e.message))
            except Exception as e:
                errors.append("%s: %s" % (address, getattr(e, "message", None) or e.__class__.__name__))
                if link.transport is not None:
                    link.transport.abortConnection()
        raise LinkFailed("cannot reach %s (%s)" % (peer, "; ".join(errors) or "no address registered"))

    # links coming and going

    def up(self, link):
        """*link* is authenticated: it is the one to its peer from now on. True if there was none before."""
        old = self.links.get(link.peer)
        self.links[link.peer] = link
        self.retry_at.pop(link.peer, None)
        self.last_error.pop(link.peer, None)
        self.offline_seen.pop(link.peer, None)
        return old is None

    def down(self, link):
        """*link* closed: True if it was the one to its peer."""
        if self.links.get(link.peer) is link:
            del self.links[link.peer]
            return True
        return False

    # back-off

    def failed(self, peer, error):
        """A dial to *peer* failed with *error*: remember why, and wait twice as long before the next one."""
        reason = getattr(error, "message", None) or str(error)
        self.last_error[peer] = reason
        self.offline_seen[peer] = "offline" if isinstance(error, PeerOffline) else \
            "unreachable" if isinstance(error, LinkFailed) else None
        _, backoff = self.retry_at.get(peer, (0, RETRY_MIN))
        self.retry_at[peer] = (self.reactor.seconds() + backoff, min(backoff * 2, RETRY_MAX))
        return reason

    def wait_before_dialling(self, peer):
        """Seconds until the back-off allows dialling *peer* again (0 or less: now)."""
        when, _ = self.retry_at.get(peer, (0, RETRY_MIN))
        return when - self.reactor.seconds()

    def forget_backoff(self, peer):
        self.retry_at.pop(peer, None)

    def came_back(self, peer):
        """*peer* was found offline and the registry now says it is online: dial it without waiting."""
        self.offline_seen.pop(peer, None)
        self.retry_at.pop(peer, None)
