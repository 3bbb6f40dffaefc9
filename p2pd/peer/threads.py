"""The two :class:`~p2pd.peer.interfaces.IThreads`: the reactor's thread pool (production), and inline (unit
tests on a ``Clock``, where work must happen in the test's own thread and at once)."""

import threading

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from zope.interface import implementer

from p2pd.peer.interfaces import IThreads


@implementer(IThreads)
class ReactorThreads:
    threaded = True

    def __init__(self, reactor):
        self.reactor = reactor

    def run(self, f, *args):
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), f, *args)

    def call_in_reactor(self, f, *args):
        self.reactor.callFromThread(f, *args)

    def start_thread(self, target, name):
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        return thread


@implementer(IThreads)
class InlineThreads:
    threaded = False

    def run(self, f, *args):
        return defer.maybeDeferred(f, *args)

    def call_in_reactor(self, f, *args):
        f(*args)

    def start_thread(self, target, name):
        return None
