"""The commands of the control socket (see :mod:`p2pd.peer.control` for the table): each ``do_<command>``
checks its arguments and calls the facade. :class:`Commands` is mixed into the protocol, which decodes the
lines and writes the replies."""

import json
import os

from twisted.internet import defer

from p2pd.errors import BadRequest

MAX_WAIT = 300.0
MAX_HISTORY = 10000


def with_files(messages, peer, transfers, limit):
    """The conversation with *peer*, its file transfers (done, or waiting for our answer) in it by time as
    entries ``{"kind": "file", "ts": ..., ...the transfer}``: files are part of a conversation, as in chat apps."""
    files = [dict(t, kind="file", ts=t.get("finished") or t.get("created") or 0) for t in transfers
             if t.get("peer") == peer and (t.get("status") == "done" or
                                           (t.get("status") == "offered" and t.get("direction") == "in"))]
    if not files:
        return messages
    return sorted(messages + files, key=lambda entry: entry.get("ts") or 0)[-limit:]


class UnknownCommand(BadRequest):
    code = "unknown_command"


def _arg(request, key, kind, required=True, default=None):
    value = request.get(key, default)
    if value is None:
        if required:
            raise BadRequest("%r needs the argument %r" % (request["cmd"], key))
        return default
    if kind is str:
        ok = isinstance(value, str)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:  # a number
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok:
        raise BadRequest("argument %r of %r must be %s" % (key, request["cmd"],
                                                           {str: "a string", int: "an integer"}.get(kind, "a number")))
    return value


def encode(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode("ascii")


class Commands:
    """The ``do_<command>`` handlers; the protocol gives ``self.facade``, ``self.write``, ``self.running`` and
    the watch helpers (``event``, ``stop_watching``)."""

    def do_ping(self, request):
        return {"pong": True, "name": getattr(self.facade, "name", None)}

    def do_status(self, request):
        return self.facade.status()

    def do_peers(self, request):
        return self.facade.peers()

    def do_whois(self, request):
        return self.facade.whois(_arg(request, "name", str))

    def do_msg(self, request):
        to = _arg(request, "to", str)
        text = _arg(request, "text", str)
        wait = _arg(request, "wait", float, required=False)
        if wait is None:
            return self.facade.send_message(to, text)
        if not 0 <= wait <= MAX_WAIT:
            raise BadRequest("wait must be between 0 and %d seconds" % MAX_WAIT)
        return self.facade.send_message(to, text, wait=wait)

    def do_history(self, request):
        conversation = _arg(request, "conversation", str, required=False)
        limit = _arg(request, "limit", int, required=False, default=100)
        if not 1 <= limit <= MAX_HISTORY:
            raise BadRequest("limit must be between 1 and %d" % MAX_HISTORY)
        messages = self.facade.history(conversation, limit=limit)
        transfers = getattr(self.facade, "transfers", None)
        if conversation is None or transfers is None:
            return messages
        return with_files(messages, self.facade.conversation_key(conversation), transfers.list(limit=1000), limit)

    def do_block(self, request):
        return self.facade.block(_arg(request, "name", str))

    def do_unblock(self, request):
        return self.facade.unblock(_arg(request, "name", str))

    def do_blocked(self, request):
        return self.facade.blocked()

    def do_quarantine(self, request):
        limit = _arg(request, "limit", int, required=False, default=100)
        if not 1 <= limit <= 1000:
            raise BadRequest("limit must be between 1 and 1000")
        return self.facade.quarantined(limit)

    def do_watch(self, request):
        if not self.watching:
            self.watching = True
            self.facade.subscribe(self.event)
        return {"watching": True}

    def do_unwatch(self, request):
        self.stop_watching()
        return {"watching": False}

    def do_create(self, request):
        return self.facade.create_room(_arg(request, "room", str))

    def do_join(self, request):
        return self.facade.join_room(_arg(request, "room", str))

    def do_leave(self, request):
        return self.facade.leave_room(_arg(request, "room", str))

    def do_delete(self, request):
        return self.facade.delete_room(_arg(request, "room", str))

    def do_public(self, request):
        return self.facade.post_room(_arg(request, "room", str), _arg(request, "text", str))

    def do_private(self, request):
        return self.facade.send_message(_arg(request, "to", str), _arg(request, "text", str))

    def do_groups(self, request):
        return self.facade.rooms()

    def do_members(self, request):
        return self.facade.room_members(_arg(request, "room", str))

    def do_users(self, request):
        """Everyone online, ourselves included and marked ``"self": true`` (as the seed's ``users`` lists)."""
        status = self.facade.status()
        me = {"name": self.facade.name, "self": True, "online": True, "tcp": status["addresses"].get("tcp", []),
              "udp": status["addresses"].get("udp", []), "fingerprint": status.get("fingerprint"),
              "version": status.get("version")}
        return defer.maybeDeferred(self.facade.peers).addCallback(
            lambda peers: sorted([me] + [p for p in peers if p.get("name") != me["name"]], key=lambda p: p["name"]))

    def _transfers(self):
        transfers = getattr(self.facade, "transfers", None)
        if transfers is None:
            raise UnknownCommand("this daemon does not transfer files")
        return transfers

    def _follow(self, request, start):
        """Run a send/get: relay its progress as lines on this connection; cancel it if the client leaves (the
        Deferred of a send or get cancels its transfer)."""
        request_id = request.get("id")

        def progress(snapshot):
            self.write(encode({"id": request_id, "progress": snapshot}))

        def done(result):
            if self.running.get(request_id) is d:
                del self.running[request_id]
            return result

        d = start(progress)
        self.running[request_id] = d
        return d.addBoth(done)

    def do_send(self, request):
        to = _arg(request, "to", str)
        paths = request.get("paths")
        if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and os.path.isabs(p)
                                                               for p in paths):
            raise BadRequest("'paths' must be a non-empty list of absolute file names")
        transport = _arg(request, "transport", str, required=False)
        return self._follow(request, lambda progress: self._transfers().send(to, paths, progress,
                                                                             transport=transport))

    def do_get(self, request):
        peer = _arg(request, "peer", str)
        name = _arg(request, "name", str)
        transport = _arg(request, "transport", str, required=False)
        return self._follow(request, lambda progress: self._transfers().get(peer, name, progress,
                                                                            transport=transport))

    def do_ls(self, request):
        return self._transfers().ls(_arg(request, "peer", str), _arg(request, "path", str, required=False,
                                                                       default=""))

    def do_accept(self, request):
        return self._transfers().accept(_arg(request, "tid", str))

    def do_reject(self, request):
        return self._transfers().reject(_arg(request, "tid", str))

    def do_cancel(self, request):
        return self._transfers().cancel(_arg(request, "tid", str))

    def do_preview(self, request):
        tid = _arg(request, "tid", str)
        index = _arg(request, "index", int, required=False)
        if index is not None and index < 0:
            raise BadRequest("index counts the files of a transfer from 0")
        return self._transfers().preview(tid, index)

    def do_transfers(self, request):
        limit = _arg(request, "limit", int, required=False, default=50)
        if not 1 <= limit <= 1000:
            raise BadRequest("limit must be between 1 and 1000")
        return self._transfers().list(limit)
