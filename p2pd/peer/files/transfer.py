"""A transfer of either direction: its record (persisted), its state (:mod:`.states`), progress, and the
Deferred of its outcome. :class:`Outgoing` adds what a sender needs, :class:`Incoming` its partial files."""

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from p2pd.core.clock import now_ms
from p2pd.peer.files import states
from p2pd.peer.files.errors import TransferError
from p2pd.peer.files.offers import view
from p2pd.peer.files.states import TransferState

log = Logger()

PROGRESS_EVERY = 0.25


class Transfer:
    """What both directions share: the record (persisted), progress, and the Deferred of the outcome."""

    direction = None

    def __init__(self, manager, record):
        self.manager = manager
        self.record = record
        self.items = record["items"]
        self.peer = record["peer"]
        self.tid = record["tid"]
        self.session = None
        self.state = TransferState(record["status"])
        self.result = defer.Deferred()
        self.watchers = []  # callables given progress dicts
        self.bytes_now = 0  # bytes moved in this session
        self.t0 = None
        self.last_progress = 0.0

    @property
    def clock(self):
        return self.manager.clock

    def save(self):
        self.record["updated"] = now_ms(self.clock)
        self.manager.storage.put_transfer(self.record, self.record["updated"])
        self.manager.commits.schedule_flush()

    def move(self, event, **changes):
        """The one way a transfer's status changes: *event* through its :class:`TransferState`
        (:class:`BadTransition` if its state does not allow it), then saved and told to the watchers."""
        self.record.update(changes)
        self.record["status"] = self.state.handle(event)
        self.save()
        self.manager.event(self)

    def started_data(self):
        self.t0 = self.clock.seconds()
        self.move(states.START, started=now_ms(self.clock))
        self.tell(dict(self.snapshot(), phase="moving"))  # the first byte: the rate is measured from here

    def progress(self, n):
        self.bytes_now += n
        now = self.clock.seconds()
        if now - self.last_progress >= PROGRESS_EVERY:
            self.last_progress = now
            self.tell(self.snapshot())

    def tell(self, snapshot):
        for watcher in list(self.watchers):
            try:
                watcher(snapshot)
            except Exception:
                log.failure("progress watcher failed")

    def done_bytes(self):
        return self.record.get("resumed_from", 0) + self.bytes_now

    def snapshot(self):
        r = self.record
        elapsed = self.clock.seconds() - self.t0 if self.t0 is not None else 0.0
        rate = self.bytes_now / elapsed if elapsed > 0 else 0.0
        done = min(self.done_bytes(), r["total"])
        left = (r["total"] - done) / rate if rate > 0 else None
        return view(r, done, round(rate), None if left is None else round(left, 1), round(elapsed, 3),
                    self.manager.inbox.path)

    def outcome(self):
        s = self.snapshot()
        s.update(saved=self.record.get("saved"), resumed_from=self.record.get("resumed_from", 0),
                 sent=self.bytes_now, seconds=s.pop("elapsed"), hash_seconds=self.record.get("hash_seconds"),
                 skipped=self.record.get("skipped", 0), renamed=self.record.get("renamed") or [],
                 error=self.record.get("error"))
        return s

    def finish(self, status, error=None):
        """End the transfer with the final *status* (once: a transfer that ended already stays as it is)."""
        if self.state.final:
            return
        self.record["finished"] = now_ms(self.clock)
        snapshot = self.snapshot()
        self.record.update(rate=snapshot["rate"], seconds=snapshot["elapsed"], sent=self.bytes_now)
        error_record = None if error is None else {"code": error.code, "message": error.message}
        self.move(states.ENDING[status], error=error_record)
        self.manager.finished(self)
        if error is not None:
            error.details.update(self.outcome())
            self.result.errback(Failure(error))
        else:
            self.result.callback(self.outcome())

    def fail(self, error, resumable=False):
        self.finish("interrupted" if resumable else "failed", error)

    def interrupted(self, why):
        self.finish("interrupted", TransferError(
            "transfer with %s interrupted: %s; run the same command again to resume" % (self.peer, why),
            code="interrupted"))


class Outgoing(Transfer):
    direction = "out"

    def __init__(self, manager, record, local, stats, digests):
        super().__init__(manager, record)
        self.local = local
        self.stats = stats
        self.digests = digests
        self.answer = defer.Deferred()
        self.link = None

    def complete(self, saved):
        self.record["saved"] = [s if isinstance(s, str) else None for s in saved][:len(self.items)]
        self.finish("done")

    def cancel(self, why):
        if self.session is not None:
            self.session.end(why)
        if self.link is not None and not self.link.closed:
            self.link.send({"t": "cancel", "tid": self.tid, "code": "cancelled", "message": why})
        if not self.answer.called:
            self.answer.errback(TransferError(why, code="cancelled"))
        self.finish("cancelled", TransferError(why, code="cancelled"))


class Incoming(Transfer):
    direction = "in"

    def __init__(self, manager, record):
        super().__init__(manager, record)
        self.have = record["have"]
        self.link = None

    def complete(self, saved):
        self.finish("done")

    def save(self):
        self.record["have"] = self.have
        super().save()

    def done_bytes(self):
        return sum(self.have)

    # partial files

    def part_name(self, index):
        return "%s.%d.part" % (self.record["key"], index)

    def open_part(self, index):
        """An fd of the partial file of *index*, positioned at the verified length (which it returns)."""
        fd, have = self.manager.inbox.open_part(self.part_name(index), self.have[index], self.items[index]["size"])
        self.have[index] = have
        return fd, have

    def unallocated(self) -> int:
        """Bytes this transfer will still take from the disk: what its files not landed yet still lack (partial
        files hold only their verified bytes)."""
        return sum(i["size"] - have for i, saved, have in zip(self.items, self.record["saved"], self.have)
                   if saved is None)

    def discard_part(self, index):
        self.have[index] = 0
        self.manager.inbox.remove_part(self.part_name(index))
        self.save()

    def discard_parts(self):
        for index, saved in enumerate(self.record["saved"]):
            if saved is None:
                self.discard_part(index)

    def land(self, index):
        """Move the verified partial file of *index* into the inbox under a name nothing has yet."""
        parts = self.record["landing"][index]
        saved = self.manager.inbox.land(self.part_name(index), parts, self.record["tops"])
        self.record["saved"][index] = saved
        self.save()
        log.info("received {path} from {peer} ({size} bytes, verified)", path=saved, peer=self.peer,
                 size=self.items[index]["size"])
        self.manager.previews.landed(self, index)  # an image is checked, in a thread


def cancellable(inner, cancel):
    """A Deferred with *inner*'s result whose ``cancel()`` calls ``cancel()`` (which ends the transfer); once
    it is cancelled, *inner*'s result is dropped (nobody waits for it)."""
    d = defer.Deferred(lambda _: cancel())

    def relay(result):
        if not d.called:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)

    inner.addBoth(relay)
    return d
