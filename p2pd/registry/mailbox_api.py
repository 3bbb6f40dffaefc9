"""The registry's mailbox routes, a mixin of :class:`p2pd.registry.api.RegistryAPI` (see
:mod:`p2pd.registry.views`).

Any registered peer may leave a message for another (signed); only the owner of a mailbox reads and acknowledges
it. A mailbox holds at most :data:`schema.MAILBOX_MAX_MESSAGES`, of them :data:`schema.MAILBOX_MAX_PER_SENDER`
from one sender, each for :data:`schema.MAILBOX_TTL`. Deposits are the first thing refused (507
``registry_full``) while the store is nearly full (:mod:`p2pd.registry.memory`); fetches and acks, which free
memory, never are.
"""

import os
import re

from twisted.internet import defer

from p2pd.core.names import canonical_name
from p2pd.errors import BadRequest, NoSuchPeer, NotFound
from p2pd.registry import schema
from p2pd.registry.views import MAX_PAGE, app, page_args

MESSAGE_ID_RE = re.compile(r"[0-9a-f]{1,64}")


class MailboxRoutes:
    """Depositing, fetching and acknowledging mailbox messages."""

    @app.route("/v1/mailbox/<string:name>", methods=["POST"])
    @defer.inlineCallbacks
    def deposit(self, request, name):
        """Leave a message for *name*; the sender is any registered peer, signing the request."""
        self.limit(request, self.writes)
        name = canonical_name(name)
        raw, body = self.read_body(request)
        sender = yield self.authenticate(request, raw)
        payload = body.get("payload")
        if not isinstance(payload, str):
            raise BadRequest("payload must be a string")
        size = len(payload.encode("utf-8"))
        if size > schema.MAILBOX_MAX_BYTES:
            raise BadRequest("payload larger than %d bytes" % schema.MAILBOX_MAX_BYTES)
        if set(body) - {"payload"}:
            raise BadRequest("unknown fields: %s" % ", ".join(sorted(set(body) - {"payload"})))
        if (yield self.store.get_peer(name)) is None:
            raise NoSuchPeer("unknown peer %s" % name)
        self.memory.admit_deposit(size)
        now = self.now_ms()
        # ids sort in deposit order, also within one millisecond: a sender's queue comes back in its seq order
        message = {"id": "%013x%06x%s" % (now, next(self.deposits) & 0xffffff, os.urandom(3).hex()),
                   "from": sender.name, "payload": payload,
                   "deposited_at": now, "expires_at": now + schema.MAILBOX_TTL * 1000}
        yield self.store.deposit(name, message, now, schema.MAILBOX_TTL, schema.MAILBOX_MAX_MESSAGES,
                                 schema.MAILBOX_MAX_PER_SENDER)
        return self.reply(request, {"id": message["id"], "expires_at": message["expires_at"]}, 201)

    @app.route("/v1/mailbox/<string:name>", methods=["GET"])
    @defer.inlineCallbacks
    def fetch(self, request, name):
        self.limit(request, self.reads)
        name = canonical_name(name)
        _, limit = page_args(request)
        yield self.authenticate(request, request.content.read(), as_name=name)
        messages = yield self.store.fetch(name, self.now_ms(), limit)
        return self.reply(request, {"messages": messages})

    @app.route("/v1/mailbox/<string:name>", methods=["DELETE"])
    @defer.inlineCallbacks
    def ack_many(self, request, name):
        """Acknowledge (delete) up to 200 messages at once: ``?ids=ID,ID,...``; ids no longer there count 0."""
        self.limit(request, self.writes)
        name = canonical_name(name)
        raw = request.args.get(b"ids", [b""])[0].decode("ascii", "replace")
        ids = raw.split(",") if raw else []
        if not 1 <= len(ids) <= MAX_PAGE or not all(MESSAGE_ID_RE.fullmatch(i) for i in ids):
            raise BadRequest("ids must be 1 to %d comma-separated message ids" % MAX_PAGE)
        yield self.authenticate(request, request.content.read(), as_name=name)
        deleted = yield self.store.ack(name, ids)
        return self.reply(request, {"deleted": deleted})

    @app.route("/v1/mailbox/<string:name>/<string:msg_id>", methods=["DELETE"])
    @defer.inlineCallbacks
    def ack(self, request, name, msg_id):
        self.limit(request, self.writes)
        name = canonical_name(name)
        if not MESSAGE_ID_RE.fullmatch(msg_id):
            raise BadRequest("invalid message id")
        yield self.authenticate(request, request.content.read(), as_name=name)
        deleted = yield self.store.ack(name, [msg_id])
        if not deleted:
            raise NotFound("no message %s in the mailbox of %s" % (msg_id, name))
        return self.reply(request, {"deleted": deleted})
