"""All transfers of one daemon, :class:`Transfers`: the bookkeeping of what runs, and the facade the daemon (link
frames, as an :class:`~p2pd.peer.interfaces.IFrameHandler`) and the control socket (commands) use.

Our offers are made by :class:`.push.Push`, incoming ones handled by :class:`.intake.Intake`, ``ls``/``get``
by :class:`.pull.Pulls`, the images among the files (facts, previews, checks) by :class:`.previews.Previews`;
the bytes go through the injected :class:`~p2pd.peer.interfaces.IDataPaths`, whatever path that is."""

import mimetypes

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from p2pd.core import datastream, wire
from p2pd.core.clock import now_ms
from p2pd.errors import NotFound, P2PDError
from p2pd.peer.files import states
from p2pd.peer.files.errors import TransferError, peer_code, peer_text
from p2pd.peer.files.inbox import Inbox
from p2pd.peer.files.intake import Intake
from p2pd.peer.files.offers import view
from p2pd.peer.files.previews import Previews
from p2pd.peer.files.pull import Pulls
from p2pd.peer.files.push import REFUSALS, Push
from p2pd.peer.limits import Limits
from p2pd.peer.files.share import Share
from p2pd.peer.files.transfer import Incoming, Outgoing, cancellable
from p2pd.peer.interfaces import IFrameHandler

log = Logger()

RECEIVER_CANCELLED = "sending again asks them to accept it again"  # what the sender reads after "bob cancelled ..."
SENDER_CANCELLED = "the same send again resumes it"  # what the receiver reads after "alice cancelled the transfer: "
RECENT = 200  # finished transfers kept in memory for ``transfers``


@implementer(IFrameHandler)
class Transfers:
    """All transfers of one daemon. *threads* is an IThreads, *events* an IEvents (``emit``), *commits* an
    ICommits (``schedule_flush``), *dialer* an IDialer (``dial``), *paths* the IDataPaths of the data."""

    kinds = wire.FILE_FRAMES

    def __init__(self, name, storage, clock, threads, events, commits, dialer, paths, inbox, share=None,
                 policy="ask", accept_from=(), accept_max=None, limits=None):
        self.name = name
        self.storage = storage
        self.clock = clock
        self.threads = threads
        self.events = events
        self.commits = commits
        self.dialer = dialer
        self.paths = paths
        self.inbox = Inbox(inbox)
        self.share = Share(share, name)
        self.policy = policy
        self.limits = limits or Limits()
        self.accept_from = tuple(accept_from or ())
        self.accept_max = accept_max
        self.buffers = datastream.BufferPool()  # shared by all receive sessions
        self.live = {}  # tid -> Outgoing/Incoming still running or waiting
        self.recent = []
        self.intake = Intake(self)
        self.pulls = Pulls(self)
        self.push = Push(self)
        self.previews = Previews(self)

    def start(self):
        """Make the inbox, and mark the transfers that ran when the daemon last stopped as interrupted."""
        self.inbox.create()
        for record in self.storage.transfers(limit=10 ** 6, statuses=states.RUNNING):
            record["status"] = states.INTERRUPTED  # the daemon stopped while they ran
            record["error"] = {"code": "interrupted", "message": "the daemon stopped during the transfer"}
            self.storage.put_transfer(record, now_ms(self.clock))
        self.expire_partials()

    def expire_partials(self):
        """Drop the partial files of incoming transfers interrupted longer ago than ``limits.partial_expiry``
        (they fail with ``expired``: sending again starts over). At start, and every hour (the service's timer)."""
        now = now_ms(self.clock)
        cutoff = now - self.limits.partial_expiry * 1000
        for record in self.storage.transfers(limit=10 ** 6, statuses=(states.INTERRUPTED,)):
            if record["direction"] != "in" or record["tid"] in self.live:
                continue
            if record.get("updated", record.get("created", now)) > cutoff:
                continue
            for index, saved in enumerate(record.get("saved") or []):
                if saved is None:
                    self.inbox.remove_part("%s.%d.part" % (record["key"], index))
            record.update(status=states.FAILED, have=[0] * len(record.get("items") or []),
                          error={"code": "expired", "message": "interrupted too long ago: its partial files were "
                                                               "removed"})
            self.storage.put_transfer(record, now)
            log.info("removed the partial files of transfer {tid} from {peer}, interrupted too long ago",
                     tid=record["tid"], peer=record["peer"])

    def stop(self):
        """The daemon is stopping: every running transfer is interrupted (and resumable)."""
        for t in list(self.live.values()):
            if t.session is not None:
                t.session.end("the daemon stopped")
            if t.record["status"] != states.OFFERED or isinstance(t, Outgoing):
                t.interrupted("the daemon stopped")
            t.result.addErrback(lambda f: None)

    # -- bookkeeping ---------------------------------------------------------------------------------------------

    def event(self, transfer):
        snapshot = transfer.snapshot()
        snapshot["event"] = "transfer"
        if transfer.record["status"] == states.OFFERED and transfer.direction == "in":
            snapshot["types"] = [mimetypes.guess_type(i["path"])[0] or "application/octet-stream"
                                 for i in transfer.items][:20]
        if transfer.record.get("error"):
            snapshot["error"] = transfer.record["error"]
        if transfer.record.get("saved"):
            snapshot["saved"] = transfer.record["saved"][:20]
        self.events.emit(snapshot)

    def finished(self, transfer):
        self.live.pop(transfer.tid, None)
        expiry = getattr(transfer, "expiry", None)
        if expiry is not None and expiry.active():
            expiry.cancel()
        if transfer.session is not None:
            transfer.session.disarm()
            self.paths.forget(transfer.session.keys.sid)
        self.recent.append(transfer)
        del self.recent[:-RECENT]

    def start_session(self, transfer, session, link):
        """Open the data path of *session* to *link*'s peer (waiting for it at most DATA_TIMEOUT)."""
        transfer.session = session
        session.arm()
        d = self.paths.open(link, session.keys.sid, session, transfer.record.get("transport") or "tcp")
        d.addErrback(lambda f: transfer.interrupted("cannot open the data connection (%s)" % f.getErrorMessage()))

    # -- facade: listing --------------------------------------------------------------------------------------

    def list(self, limit=100):
        live = {t.tid: t for t in self.live.values()}
        out = []
        for record in self.storage.transfers(limit=limit):
            t = live.get(record["tid"])
            if t is not None:
                entry = t.snapshot()
            else:
                done = sum(record.get("have") or []) if record["direction"] == "in" else \
                    record["total"] if record["status"] == states.DONE else \
                    record.get("resumed_from", 0) + record.get("sent", 0)
                entry = view(record, done, record.get("rate", 0), None, record.get("seconds"), self.inbox.path)
            entry.update(error=record.get("error"), saved=(record.get("saved") or [])[:20],
                         created=record.get("created"), finished=record.get("finished"))
            out.append(entry)
        return out

    # -- facade: commands ----------------------------------------------------------------------------------------

    def send(self, to, paths, progress=None, rid=None, link=None, transport=None):
        """Deferred[outcome]: offer *paths* to *to* and send them once accepted. Cancelling the Deferred
        cancels the transfer (the receiver keeps what it verified)."""
        handle = {"tid": None}
        inner = defer.ensureDeferred(self.push.send(to, paths, progress, rid, link, handle, transport))
        return cancellable(inner, lambda: self.cancel_quietly(handle["tid"]))

    def get(self, peer, path, progress=None, transport=None):
        """Deferred[outcome] of pulling *path* from *peer*'s share; cancelling it cancels the transfer."""
        return self.pulls.get(peer, path, progress, transport)

    def ls(self, peer, path=""):
        return self.pulls.ls(peer, path)

    def accept(self, tid):
        return self.intake.accept(tid)

    def reject(self, tid):
        return self.intake.reject(tid)

    def preview(self, tid, index=None):
        return self.previews.get(tid, index)

    def cancel(self, tid):
        t = self.live.get(tid)
        if t is None:
            raise NotFound("no transfer %s is running" % tid)
        if isinstance(t, Outgoing):
            t.cancel(SENDER_CANCELLED)
        else:
            # A receiver's cancel is a refusal until it accepts again: the same offer again waits for `accept`.
            t.record["cancelled"] = True
            why = TransferError(RECEIVER_CANCELLED, code="cancelled")
            if t.link is not None and not t.link.closed:
                t.link.send({"t": "cancel", "tid": tid, "code": "cancelled", "message": why.message})
            if t.session is not None:
                t.session.end("cancelled", tell=why)  # on the data stream too, ahead of its close
            t.fail(TransferError("cancelled", code="cancelled"), resumable=True)
        return {"tid": tid, "status": "cancelled"}

    def cancel_quietly(self, tid):
        """Cancel *tid* if it still runs (a client that asked for it went away)."""
        if tid is not None and tid in self.live:
            try:
                self.cancel(tid)
            except P2PDError:
                pass

    # -- link frames (IFrameHandler) -----------------------------------------------------------------------------

    def frame(self, link, frame):
        kind = frame["t"]
        handler = {"offer": self.intake.on_offer, "ls": self.pulls.on_ls, "get": self.pulls.on_get,
                   "listing": self.pulls.on_listing}.get(kind) or getattr(self, "_on_" + kind)
        try:
            handler(link, frame)
        except P2PDError as e:
            link.send(wire.error(e.code, e.message, frame.get("tid") or frame.get("rid")))

    def _on_accept(self, link, frame):
        out = self.live.get(frame["tid"])
        if not isinstance(out, Outgoing) or out.peer != link.peer or out.answer.called:
            raise TransferError("no offer %s is waiting for an answer" % frame["tid"], code="unknown_transfer")
        out.link = link
        out.answer.callback(frame)

    def _on_reject(self, link, frame):
        out = self.live.get(frame["tid"])
        if isinstance(out, Outgoing) and out.peer == link.peer and not out.answer.called:
            code = frame["code"] if frame["code"] in REFUSALS else "rejected"
            why = "%s rejected the files" % link.peer if code == "rejected" else \
                "%s refused the files: %s" % (link.peer, peer_text(frame["message"]))
            out.answer.errback(TransferError(why, code=code))

    def _on_cancel(self, link, frame):
        t = self.live.get(frame["tid"])
        if t is None or t.peer != link.peer:
            return
        why = "%s cancelled the transfer: %s" % (link.peer, peer_text(frame["message"]))
        if isinstance(t, Outgoing):
            if not t.answer.called:
                t.answer.errback(TransferError(why, code="cancelled"))
            elif t.session is not None:
                t.session.end(why)
                t.fail(TransferError(why, code="cancelled"))
        else:
            if t.session is not None:
                t.session.end(why)
            t.fail(TransferError(why, code="cancelled"), resumable=t.record["status"] == states.ACTIVE)

    def link_error(self, link, frame):
        """An ``error`` frame whose ``ref`` may name one of our transfers or requests; True if it did."""
        ref = frame.get("ref")
        error = TransferError("%s: %s" % (link.peer, peer_text(frame["message"])), code=peer_code(frame["code"]))
        t = self.live.get(ref)
        if isinstance(t, Outgoing) and t.peer == link.peer:
            if not t.answer.called:
                t.answer.errback(error)
            return True
        if isinstance(t, Incoming) and t.peer == link.peer:
            t.fail(error, resumable=True)
            return True
        return self.pulls.link_error(link, ref, error)

    def link_down(self, link):
        for t in list(self.live.values()):
            if t.link is link and isinstance(t, Outgoing) and not t.answer.called:
                t.answer.errback(TransferError("lost the link to %s before it answered; run the same command "
                                               "again" % link.peer, code="interrupted"))
        self.pulls.link_down(link)

