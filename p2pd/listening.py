"""Child services that listen while they run, built from endpoint strings or ports; shared by both roles."""

from twisted.application import service
from twisted.internet import endpoints


def describe_port(port) -> str:
    addr = port.getHost()
    host = addr.host if ":" not in addr.host else "[%s]" % addr.host
    return "%s:%d" % (host, addr.port)


class ListeningService(service.Service):
    """Listens on an endpoint description while running. Listening happens synchronously in startService
    (TCP and UDP endpoints listen at once), so a busy port stops the process with a clear message."""

    def __init__(self, reactor, description, factory):
        self.reactor = reactor
        self.description = description
        self.factory = factory
        self.port = None

    def startService(self):
        outcome = []
        endpoints.serverFromString(self.reactor, self.description).listen(self.factory).addBoth(outcome.append)
        if not outcome or not hasattr(outcome[0], "getHost"):
            reason = outcome[0].getErrorMessage() if outcome else "listening did not complete"
            raise SystemExit("p2pd: cannot listen on %s: %s" % (self.description, reason))
        self.port = outcome[0]
        service.Service.startService(self)

    def stopService(self):
        service.Service.stopService(self)
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()


class UDPService(ListeningService):
    """Listens on a UDP port while running (a busy port stops the process with a clear message)."""

    def __init__(self, reactor, port, protocol, interface=""):
        super().__init__(reactor, "udp:%d" % port, None)
        self.portnum, self.protocol, self.interface = port, protocol, interface

    def startService(self):
        try:
            self.port = self.reactor.listenUDP(self.portnum, self.protocol, interface=self.interface)
        except Exception as e:
            raise SystemExit("p2pd: cannot listen on udp port %d: %s" % (self.portnum, e))
        service.Service.startService(self)
