"""One SQLite commit per reactor turn, and what it allows.

Everything chat stores in a reactor turn joins one commit at its end; acknowledgements to peers and events to
watchers wait for it, so nothing is acknowledged or shown that a crash could still lose. :class:`Checkpoints`
folds the WAL back into the database every second, from a worker thread."""

from twisted.logger import Logger
from zope.interface import implementer

from p2pd.core import wire
from p2pd.peer.interfaces import ICommits

log = Logger()

FLUSH_DELAY = 0  # acks and delivered events go out at the end of the reactor turn, after one commit
CHECKPOINT_EVERY = 1.0


@implementer(ICommits)
class Commits:
    def __init__(self, storage, clock, delay=FLUSH_DELAY):
        self.storage = storage
        self.clock = clock
        self.delay = delay
        self._call = None
        self._acks = {}  # link -> [message id] to acknowledge after the next commit
        self._after = []  # callables to run after the next commit

    def schedule_flush(self):
        if self._call is None:
            self._call = self.clock.callLater(self.delay, self.flush)

    def after_commit(self, action):
        self._after.append(action)
        self.schedule_flush()

    def acknowledge(self, link, msg_id):
        """Acknowledge *msg_id* on *link* after the next commit (acks of one turn go out batched)."""
        ids = self._acks.get(link)
        if ids is None:
            self._acks[link] = [msg_id]
        else:
            ids.append(msg_id)
        self.schedule_flush()

    def flush(self):
        """One commit for everything this reactor turn stored, then the acks and events it allows."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self.storage.commit()
        acks, self._acks = self._acks, {}
        for link, ids in acks.items():
            for frame in wire.acks(ids):
                link.send(frame)
        after, self._after = self._after, []
        for action in after:
            try:
                action()
            except Exception:
                log.failure("after-commit action failed")


class Checkpoints:
    """Every *every* seconds, ``storage.checkpoint()`` through *threads* (an IThreads), off the reactor's path."""

    def __init__(self, storage, clock, threads, every=CHECKPOINT_EVERY):
        self.storage = storage
        self.clock = clock
        self.threads = threads
        self.every = every
        self.running = False
        self._call = None

    def start(self):
        self.running = True
        self._call = self.clock.callLater(self.every, self._checkpoint)

    def stop(self):
        self.running = False
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _checkpoint(self):
        self._call = None
        if not self.running:
            return
        d = self.threads.run(self.storage.checkpoint)
        d.addErrback(lambda f: log.warn("WAL checkpoint failed: {error}", error=f.getErrorMessage()))
        d.addBoth(self._again)

    def _again(self, _):
        if self.running:
            self._call = self.clock.callLater(self.every, self._checkpoint)
