"""The events the control socket's watchers get (the kinds are listed in :mod:`p2pd.peer.facade`)."""

from twisted.logger import Logger
from zope.interface import implementer

from p2pd.peer.interfaces import IEvents

log = Logger()


def call_each(callbacks, value, what):
    """Call every callback of *callbacks* with *value*; one that raises is logged as *what* and the others still
    run (a snapshot of the list: a callback may unsubscribe itself)."""
    for callback in list(callbacks):
        try:
            callback(value)
        except Exception:
            log.failure(what)


@implementer(IEvents)
class Events:
    def __init__(self):
        self.subscribers = []

    @property
    def watched(self):
        """Whether anybody listens (an event that costs something to build can be skipped)."""
        return bool(self.subscribers)

    def emit(self, event):
        call_each(self.subscribers, event, "event subscriber failed")

    def subscribe(self, callback):
        self.subscribers.append(callback)

    def unsubscribe(self, callback):
        if callback in self.subscribers:
            self.subscribers.remove(callback)
