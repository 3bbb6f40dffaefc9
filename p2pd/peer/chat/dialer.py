"""Authenticated links to peers (:class:`~p2pd.peer.interfaces.IDialer`), reused while they are up, and the
back-off between failed attempts.

A dial looks the peer up (checked against our pin), tries each TCP address it registered with TLS, and succeeds
once the link's handshake proved the peer's key. Concurrent dials to one peer share one attempt."""

from twisted.internet import defer, endpoints
from zope.interface import implementer

from p2pd.errors import IdentityMismatch, LinkFailed, PeerOffline
from p2pd.peer.chat.shared import Shared
from p2pd.peer.interfaces import IDialer

DIAL_TIMEOUT = 5
RETRY_MIN = 2.0
RETRY_MAX = 60.0


@implementer(IDialer)
class Dialer:
    """*pins* looks peers up, *tls* makes client endpoints, ``link_factory(expected)`` makes an unconnected link
    that expects ``(name, key)``."""

    def __init__(self, pins, tls, reactor, link_factory, timeout=DIAL_TIMEOUT):
        self.pins = pins
        self.tls = tls
        self.reactor = reactor
        self.link_factory = link_factory
        self.timeout = timeout
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
