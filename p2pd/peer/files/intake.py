"""Incoming offers: the checks and the policy (ask, auto, deny), consent (accept/reject), and the space and
names an accepted offer is given in the inbox."""

import base64

from twisted.logger import Logger

from p2pd.core import datastream, filenames
from p2pd.core.clock import now_ms
from p2pd.core.sizes import human_size
from p2pd.errors import NotFound
from p2pd.peer.files import states
from p2pd.peer.files.diskwriter import FREE_MARGIN
from p2pd.peer.files.errors import TransferError
from p2pd.peer.files.offers import check_offer, fingerprint, new_id
from p2pd.peer.files.sessions import ReceiveSession
from p2pd.peer.files.transfer import Incoming

log = Logger()

SPACE_MARGIN = FREE_MARGIN  # free bytes always left on the inbox's file system


class Intake:
    """The offers that reach us and our answers to them; part of *manager*."""

    def __init__(self, manager):
        self.m = manager

    def busy(self, peer, files):
        """Why an offer of *files* from *peer* that would wait for our answer is refused at the door (too many
        wait already), or None."""
        limits = self.m.limits
        pending = [t for t in self.m.live.values()
                   if isinstance(t, Incoming) and t.record["status"] == states.OFFERED]
        if sum(1 for t in pending if t.peer == peer) >= limits.pending_offers_per_peer:
            return "%d offers from you wait for %s's answer already" % (limits.pending_offers_per_peer, self.m.name)
        if len(pending) >= limits.pending_offers:
            return "%d offers wait for %s's answer already" % (limits.pending_offers, self.m.name)
        if sum(len(t.items) for t in pending) + files > limits.pending_files:
            return "the offers waiting for %s's answer hold %d files already" % (self.m.name, limits.pending_files)
        return None

    def on_offer(self, link, frame):
        peer = link.peer
        if frame["tid"] in self.m.live:
            raise TransferError("offer %s already exists" % frame["tid"], code="bad_frame")
        if self.m.policy == "ask" and not frame.get("rid"):
            busy = self.busy(peer, len(frame["items"]))
            if busy is not None:  # refused before anything of it is kept
                log.info("refused an offer from {peer}: {why}", peer=peer, why=busy)
                link.send({"t": "reject", "tid": frame["tid"], "code": "busy", "message": busy + "; try later"})
                return
        items = [{"path": i["path"], "size": i["size"], "hash": i["hash"]} for i in frame["items"]]
        self.m.previews.take_facts(peer, frame, items)  # what the offer says of its images, if it is well formed
        try:
            landing = check_offer(items)
        except filenames.BadFileName as e:
            log.warn("refused an offer from {peer}: {error}", peer=peer, error=e.message)
            self.m.events.emit({"event": "transfer", "tid": frame["tid"], "direction": "in", "peer": peer,
                              "status": "refused", "error": {"code": e.code, "message": e.message}})
            raise
        total = sum(i["size"] for i in items)
        rid = frame.get("rid")
        fp = fingerprint(items)
        previous = self.m.storage.find_transfer(peer, "in", fp, states.UNFINISHED)
        if previous is not None and previous["tid"] in self.m.live:
            previous = None  # still running under its own tid: this is a second, separate offer
        if previous is not None:
            record = previous
            self.m.storage.put_transfer(dict(record, status="replaced"), now_ms(self.m.clock))
            record.update(tid=frame["tid"], status=states.OFFERED, error=None, rid=rid, previews=[],
                          transport=frame.get("transport") or "tcp")
        else:
            n = len(items)
            record = {"tid": frame["tid"], "direction": "in", "peer": peer, "status": states.OFFERED,
                      "fingerprint": fp,
                      "items": items, "total": total, "have": [0] * n, "saved": [None] * n, "key": new_id(),
                      "landing": ["/".join(parts) for parts in landing], "tops": {}, "kind": "pull" if rid else
                      "push", "rid": rid, "created": now_ms(self.m.clock), "error": None, "accepted": False,
                      "transport": frame.get("transport") or "tcp"}
        t = Incoming(self.m, record)
        t.link = link
        self.m.live[t.tid] = t
        request = self.m.pulls.answered_get(rid, peer) if rid else None
        if rid and request is None:
            self.m.live.pop(t.tid)
            raise TransferError("offer answers no request of ours", code="unexpected_offer")
        if request is not None:
            request.callback(t)
            return self.accept(t.tid)
        if record.get("accepted") and not record.get("cancelled"):
            return self.accept(t.tid)  # the same offer again, which we accepted before: resume it
        if record.get("cancelled"):
            pass  # we cancelled it: it waits for `accept` again, whatever the policy
        elif self.m.policy == "deny":
            return self._refuse(t, "denied", "this peer does not accept files")
        elif self.m.policy == "auto":
            if self.m.accept_from and peer not in self.m.accept_from:
                return self._refuse(t, "denied", "this peer accepts files only from some peers")
            if self.m.accept_max is not None and total > self.m.accept_max:
                return self._refuse(t, "offer_too_large", "this peer accepts offers up to %s; this one is %s"
                                    % (human_size(self.m.accept_max), human_size(total)))
            return self.accept(t.tid)
        t.save()
        checked = self.m.previews.receive(t, frame)  # the offer is shown once its previews are checked (a thread)
        checked.addCallback(lambda _: self.m.event(t) if t.record["status"] == states.OFFERED else None)
        t.expiry = self.m.clock.callLater(self.m.limits.offer_expiry, self._expire, t)
        log.info("{peer} offers {n} file(s), {size}: waiting for accept/reject {tid}", peer=peer, n=len(items),
                 size=human_size(total), tid=t.tid)

    def _expire(self, t):
        if t.record["status"] == states.OFFERED and self.m.live.get(t.tid) is t:
            minutes = self.m.limits.offer_expiry / 60
            self._refuse(t, "expired", "%s did not answer the offer within %s minute%s" % (
                self.m.name, "%g" % minutes, "" if minutes == 1 else "s"))

    def _refuse(self, t, code, message):
        if t.link is not None and not t.link.closed:
            t.link.send({"t": "reject", "tid": t.tid, "code": code, "message": message})
        t.finish(states.REJECTED, TransferError(message, code=code))
        t.result.addErrback(lambda f: None)

    def _find_incoming(self, tid):
        t = self.m.live.get(tid) if isinstance(tid, str) else None
        if not isinstance(t, Incoming):
            raise NotFound("no offer %s is waiting (p2pctl transfers lists them)" % (tid,))
        return t

    def accept(self, tid):
        """Accept the waiting offer *tid* (or resume it): check space, choose names, answer with a secret."""
        t = self._find_incoming(tid)
        if not t.state.allows(states.ACCEPT):
            raise TransferError("transfer %s is %s, not waiting for an answer" % (tid, t.record["status"]),
                                code="bad_state")
        need = t.unallocated()
        held = self.unfinished_from(t.peer, t)
        if held + need > self.m.limits.unfinished_per_peer:
            message = ("%s holds or expects %s of unfinished files from you already (its limit is %s): finish or "
                       "cancel those first" % (self.m.name, human_size(held),
                                               human_size(self.m.limits.unfinished_per_peer)))
            self._refuse(t, "no_space", message)
            return {"tid": tid, "status": "rejected", "error": message}
        free = self.m.inbox.free_space()
        reserved = sum(o.unallocated() for o in self.m.live.values() if isinstance(o, Incoming) and o is not t
                       and o.record["status"] in (states.ACCEPTED, states.ACTIVE))
        if need + reserved + SPACE_MARGIN > free:
            message = ("not enough free space in the inbox: the files need %s, %s is free (%s of it promised to "
                       "other transfers)" % (human_size(need), human_size(max(0, free - SPACE_MARGIN)),
                                             human_size(reserved)))
            self._refuse(t, "no_space", message)
            return {"tid": tid, "status": "rejected", "error": message}
        if not t.record.get("accepted"):
            t.record["tops"] = self.choose_tops(t)
        secret = datastream.new_secret()
        t.record.update(accepted=True, cancelled=False, resumed_from=sum(t.have))
        t.move(states.ACCEPT)  # 'active' once the data path is up
        answer = {"t": "accept", "tid": tid, "secret": base64.urlsafe_b64encode(secret).decode().rstrip("="),
                  "have": list(t.have)}
        session = ReceiveSession(t, secret, self.m.clock, self.m.threads, self.m.buffers)

        def answered(link):
            t.link = link
            link.send(answer)
            self.m.start_session(t, session, link)

        if t.link is not None and not t.link.closed:
            answered(t.link)
        else:
            d = self.m.dialer.dial(t.peer)
            d.addCallbacks(answered, lambda f: t.interrupted("cannot reach %s to answer: %s"
                                                             % (t.peer, f.getErrorMessage())))
        t.result.addErrback(lambda f: None)  # outcomes of offers nobody waits on are in ``transfers``
        return {"tid": tid, "status": "accepted"}

    def unfinished_from(self, peer, but):
        """Bytes *peer*'s unfinished incoming transfers (but *but*) hold in partial files or still need."""
        live = [o for o in self.m.live.values() if isinstance(o, Incoming) and o.peer == peer and o is not but
                and o.record["status"] in (states.ACCEPTED, states.ACTIVE)]
        held = sum(o.unallocated() + sum(o.have) for o in live)
        seen = {o.tid for o in live} | {but.tid}
        for record in self.m.storage.transfers(limit=10 ** 4, statuses=(states.INTERRUPTED,)):
            if record["direction"] == "in" and record["peer"] == peer and record["tid"] not in seen:
                held += sum(record.get("have") or ())
        return held

    def reject(self, tid):
        t = self._find_incoming(tid)
        if not t.state.allows(states.ACCEPT):
            raise TransferError("transfer %s is %s, not waiting for an answer" % (tid, t.record["status"]),
                                code="bad_state")
        self._refuse(t, "rejected", "%s rejected the files" % self.m.name)
        t.discard_parts()
        return {"tid": tid, "status": "rejected"}

    def choose_tops(self, t):
        """Top-level names in the inbox for this transfer's files, each one nothing else has or will have."""
        taken = set()
        for other in self.m.live.values():
            if isinstance(other, Incoming) and other is not t:
                taken.update(n.casefold() for n in other.record.get("tops", {}).values())
        return self.m.inbox.choose_tops(t.record["landing"], taken)
