"""Pull: ``ls`` and ``get`` of a peer's share (our requests and their answers), and serving our own share."""

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from p2pd.core import wire
from p2pd.core.names import canonical_name
from p2pd.errors import BadRequest, P2PDError
from p2pd.peer.files.errors import TransferError
from p2pd.peer.files.offers import check_transport, new_id
from p2pd.peer.files.transfer import cancellable

log = Logger()


class Pulls:
    """Our ``ls``/``get`` requests waiting for an answer, and the share we serve; part of *manager*."""

    def __init__(self, manager):
        self.manager = manager
        self.requests = {}  # rid -> (peer, kind, Deferred) of our ls/get requests
        self.serving = {}  # link -> rid of the peer's ls/get we are answering on it (one at a time)

    def _request(self, peer, frame, kind):
        d = defer.Deferred()

        def send(link):
            d.link = link
            self.requests[frame["rid"]] = (peer, kind, d)
            link.send(frame)
            return d

        peer = canonical_name(peer)
        return self.manager.dialer.dial(peer).addCallback(send)

    def ls(self, peer, path=""):
        frame = {"t": "ls", "rid": new_id(), "path": path or ""}
        d = self._request(peer, frame, "ls")
        return d.addCallback(lambda listing: {"peer": canonical_name(peer), "path": path or "",
                                              "items": listing["items"], "truncated": listing.get("truncated")})

    def get(self, peer, path, progress=None, transport=None):
        """Deferred[outcome]; cancelling it cancels the transfer once the peer offered it."""
        if not isinstance(path, str) or not path:
            raise BadRequest("'name' must be a file or folder name in the peer's share")
        frame = {"t": "get", "rid": new_id(), "path": path}
        if transport is not None:
            frame["transport"] = check_transport(transport)
        handle = {"tid": None}

        def offered(t):
            handle["tid"] = t.tid
            if progress is not None:
                t.watchers.append(progress)
            return t.result

        inner = self._request(peer, frame, "get").addCallback(offered)
        return cancellable(inner, lambda: self.manager.cancel_quietly(handle["tid"]))

    def answered_get(self, rid, peer):
        """The Deferred of our ``get`` *rid* to *peer*, taken (None if the offer answers nothing of ours)."""
        request = self.requests.get(rid)
        if request is None or request[0] != peer or request[1] != "get":
            return None
        return self.requests.pop(rid)[2]

    def on_listing(self, link, frame):
        request = self.requests.get(frame["rid"])
        if request is not None and request[0] == link.peer and request[1] == "ls":
            del self.requests[frame["rid"]]
            request[2].callback(frame)

    def link_error(self, link, ref, error):
        request = self.requests.get(ref)
        if request is not None and request[0] == link.peer:
            self.requests.pop(ref)
            request[2].errback(error)
            return True
        return False

    def link_down(self, link):
        self.serving.pop(link, None)
        for rid, (peer, kind, d) in list(self.requests.items()):
            if peer == link.peer and getattr(d, "link", None) is link:
                del self.requests[rid]
                d.errback(TransferError("lost the link to %s before it answered" % peer, code="interrupted"))

    # serving our share: one ls or get at a time per link, listings in a thread

    def _take(self, link, frame):
        """Start answering *frame* on *link*; False (the peer told "busy") if another one is being answered."""
        if link in self.serving:
            link.send(wire.error("busy", "one ls or get at a time: the one before is still being answered",
                                 frame["rid"]))
            return False
        self.serving[link] = frame["rid"]
        return True

    def _served(self, link, rid):
        if self.serving.get(link) == rid:
            del self.serving[link]

    def on_ls(self, link, frame):
        if not self._take(link, frame):
            return
        rid = frame["rid"]
        d = self.manager.threads.run(self.manager.share.listing, frame["path"], rid)

        def done(outcome):
            self._served(link, rid)
            if not isinstance(outcome, Failure):
                return link.send(outcome)
            error = outcome.value
            if isinstance(error, P2PDError):
                link.send(wire.error(error.code, error.message, rid))
            else:
                log.failure("listing {path} for {peer} failed", outcome, path=frame["path"], peer=link.peer)
                link.send(wire.error("internal", "the listing failed", rid))

        d.addBoth(done)

    def on_get(self, link, frame):
        if not self._take(link, frame):
            return
        rid = frame["rid"]
        try:
            real = self.manager.share.local_path(frame["path"])
        except Exception:
            self._served(link, rid)
            raise

        def offered(snapshot):  # the offer went out: the next request may come
            self._served(link, rid)

        d = self.manager.send(link.peer, [real], progress=offered, rid=rid, link=link,
                              transport=frame.get("transport"))

        def failed(f):
            self._served(link, rid)
            if isinstance(f.value, P2PDError) and f.value.code in ("file_missing", "file_unreadable",
                                                                    "too_many_files"):
                link.send(wire.error(f.value.code, f.value.message, rid))
            log.info("serving {path} to {peer} failed: {error}", path=frame["path"], peer=link.peer,
                     error=f.getErrorMessage())

        d.addErrback(failed)
