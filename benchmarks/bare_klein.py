"""The benchmark's baseline: a bare Klein app on the registry's own HTTP stack, with one constant JSON route.

    .venv/bin/python benchmarks/bare_klein.py [--endpoint tcp:0:interface=127.0.0.1]

It serves ``GET /bare`` through :func:`p2pd.registry.http.make_site` (same ``Site``, request class, timeouts
and disabled access log as the registry) on the default reactor, the one ``twistd`` picks, in one process.
It prints its TCP port alone on the first line of stdout, then serves until SIGTERM/SIGINT, or until the
process that started it goes away (so a killed benchmark does not leave it behind), or ``--lifetime`` runs out.
"""

import argparse
import os
import sys

from klein import Klein
from twisted.internet import endpoints, task

from p2pd.core import jsonbody
from p2pd.registry.http import make_site

BODY = jsonbody.dumps({"name": "bare", "online": True, "tcp": ["127.0.0.1:4000"], "udp": []})


class BareApp:
    """One route answering what a small registry reply looks like, with the same headers."""

    app = Klein()

    def resource(self):
        return self.app.resource()

    @app.route("/bare", methods=["GET"])
    def bare(self, request):
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        return BODY


def watch_parent(reactor, parent_pid):
    """Stop the reactor once the parent process is gone (we get re-parented)."""
    def check():
        if os.getppid() != parent_pid:
            reactor.stop()

    loop = task.LoopingCall(check)
    loop.clock = reactor
    loop.start(1.0, now=False)
    return loop


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint", default="tcp:0:interface=127.0.0.1", help="server endpoint description")
    parser.add_argument("--lifetime", type=float, default=3600.0, help="stop after this many seconds")
    args = parser.parse_args(argv)

    from twisted.internet import reactor  # the default reactor, as twistd installs it

    site = make_site(BareApp().resource())

    def listening(port):
        address = port.getHost()
        print(address.port, flush=True)
        sys.stderr.write("bare_klein: listening on %s:%d (reactor %s.%s)\n" % (
            address.host, address.port, type(reactor).__module__, type(reactor).__name__))
        sys.stderr.flush()

    status = []

    def failed(failure):
        sys.stderr.write("bare_klein: cannot listen on %s: %s\n" % (args.endpoint, failure.getErrorMessage()))
        status.append(1)
        reactor.callWhenRunning(reactor.stop)

    endpoints.serverFromString(reactor, args.endpoint).listen(site).addCallbacks(listening, failed)
    watch_parent(reactor, os.getppid())
    reactor.callLater(args.lifetime, reactor.stop)
    reactor.run()
    return status[0] if status else 0


if __name__ == "__main__":
    sys.exit(main())
