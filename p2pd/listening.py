"""Listening child services for both roles: Twisted's own endpoint and UDP services, plus the one thing they do
not give, the port they are bound to (a role publishes it: ``tcp:0`` takes a free one).

Both listen synchronously when started (``strports.service`` raises a busy port from ``startService``, as
``UDPServer`` does; under twistd already from ``privilegedStartService``), so :func:`start_or_exit`, around
either, turns a port that cannot be had into one clear line and exit 1.
"""

from twisted.application import internet, strports
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IStreamServerEndpoint
from zope.interface import implementer


@implementer(IStreamServerEndpoint)
class _Recorded:
    """An endpoint that remembers the port its ``listen`` produced."""

    def __init__(self, endpoint):
        self.endpoint = endpoint
        self.port = None

    def listen(self, factory):
        def listening(port):
            self.port = port
            return port

        return self.endpoint.listen(factory).addCallback(listening)


BACKLOG = 1024  # pending connections the kernel queues for a TCP listener (Twisted's default is 50)


def with_backlog(description, backlog=BACKLOG):
    """*description* with a listen backlog of *backlog* if it is a TCP one that names none: a burst of more
    connections than the backlog holds loses the SYNs past it, and their clients retry only after a second."""
    kind = description.split(":", 1)[0].lower()
    if kind in ("tcp", "tcp6") and "backlog=" not in description:
        return "%s:backlog=%d" % (description, backlog)
    return description


def stream_service(reactor, description, factory):
    """A service listening on the endpoint *description* (``tcp:0:interface=127.0.0.1``, ``unix:PATH:mode=600``)
    while it runs; :func:`bound` tells where."""
    svc = strports.service(with_backlog(description), factory, reactor=reactor)
    svc.endpoint = _Recorded(svc.endpoint)
    return svc


def udp_service(reactor, port, protocol, interface=""):
    """A service with *protocol* on UDP *port* (0: a free one) of *interface* while it runs."""
    return internet.UDPServer(port, protocol, interface=interface, reactor=reactor)


def bound(svc):
    """The address (``getHost()``) a running :func:`stream_service` or :func:`udp_service` is bound to."""
    if isinstance(svc, internet.UDPServer):
        return svc.args[1].transport.getHost()
    return svc.endpoint.port.getHost()


def describe(address) -> str:
    """``host:port`` (``[host]:port`` for IPv6) of an address from :func:`bound`."""
    host = address.host if ":" not in address.host else "[%s]" % address.host
    return "%s:%d" % (host, address.port)


def start_or_exit(start):
    """Call *start* (a MultiService's ``startService``); a port that cannot be had ends the process with
    ``p2pd: cannot listen on WHERE: WHY`` and exit status 1, without a traceback."""
    try:
        start()
    except CannotListenError as e:
        where = e.port if e.interface is None else "%s:%s" % (e.interface or "*", e.port)
        raise SystemExit("p2pd: cannot listen on %s: %s" % (where, e.socketError)) from None
