"""Pull: ``ls`` and ``get`` of a peer's share (our requests and their answers), and serving our own share."""

from twisted.internet import defer
from twisted.logger import Logger

from p2pd.core import wire
from p2pd.core.names import canonical_name
from p2pd.errors import BadRequest, P2PDError
from p2pd.peer.files.errors import TransferError
from p2pd.peer.files.offers import new_id
from p2pd.peer.files.transfer import cancellable

log = Logger()


class Pulls:
    """Our ``ls``/``get`` requests waiting for an answer, and the share we serve; part of *manager*."""

    def __init__(self, manager):
        self.manager = manager
        self.requests = {}  # rid -> (peer, kind, Deferred) of our ls/get requests

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

    def get(self, peer, path, progress=None):
        """Deferred[outcome]; cancelling it cancels the transfer once the peer offered it."""
        if not isinstance(path, str) or not path:
            raise BadRequest("'name' must be a file or folder name in the peer's share")
        frame = {"t": "get", "rid": new_id(), "path": path}
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
        for rid, (peer, kind, d) in list(self.requests.items()):
            if peer == link.peer and getattr(d, "link", None) is link:
                del self.requests[rid]
                d.errback(TransferError("lost the link to %s before it answered" % peer, code="interrupted"))

    # serving our share

    def on_ls(self, link, frame):
        link.send(self.manager.share.listing(frame["path"], frame["rid"]))

    def on_get(self, link, frame):
        real = self.manager.share.local_path(frame["path"])
        d = self.manager.send(link.peer, [real], rid=frame["rid"], link=link)

        def failed(f):
            if isinstance(f.value, P2PDError) and f.value.code in ("file_missing", "file_unreadable",
                                                                    "too_many_files"):
                link.send(wire.error(f.value.code, f.value.message, frame["rid"]))
            log.info("serving {path} to {peer} failed: {error}", path=frame["path"], peer=link.peer,
                     error=f.getErrorMessage())

        d.addErrback(failed)
