"""The registry's mailbox, both ways: :class:`Depositor` seals the queued messages of a peer we cannot reach
into its mailbox (the registry sees only ciphertext), :class:`MailboxFetcher` collects, verifies, stores and
acknowledges what waits in ours (messages, and the receipts for ours: :mod:`.receipts`)."""

import json

from twisted.internet import defer
from twisted.logger import Logger

from p2pd.core import wire
from p2pd.core.clock import now_ms
from p2pd.core.sealed import SealedError, open_sealed, seal
from p2pd.errors import IdentityMismatch, MethodNotAllowed, NoSuchPeer, NotFound, P2PDError
from p2pd.peer.chat.shared import Shared, patiently

log = Logger()

MAILBOX_PAGE = 50
MAX_PAGE = 200  # the registry's largest page
MAX_SKIPPED = 150  # items left for later after which a fetch stops paging past them


class Depositor:
    """Seals *outbox*'s messages for one peer into the registry mailbox, one deposit at a time per peer."""

    def __init__(self, outbox, name, identity, storage, registry, clock, events, pins, dialer):
        self.outbox = outbox
        self.name = name
        self.identity = identity
        self.storage = storage
        self.registry = registry
        self.clock = clock
        self.events = events
        self.pins = pins
        self.dialer = dialer
        self.depositing = set()  # peers whose queue is being sealed into the mailbox

    def deposit(self, peer, reason, recheck=False):
        """Seal *peer*'s queued messages into the registry mailbox, in order; stop at the first failure.
        With *recheck*, a peer that the registry now lists online as it was not before is dialled instead."""
        if peer in self.depositing:
            return defer.succeed(None)
        self.depositing.add(peer)
        return self._deposit(peer, reason, recheck).addBoth(lambda r: self.depositing.discard(peer) or r)

    @defer.inlineCallbacks
    def _deposit(self, peer, reason, recheck):
        outbox = self.outbox
        try:
            record = yield self.pins.lookup(peer)
        except Exception as e:
            log.info("cannot deposit for {peer}: {error}", peer=peer, error=e)
            return
        if recheck and record.get("online") and self.dialer.offline_seen.get(peer) == "offline":
            self.dialer.came_back(peer)
            self.depositing.discard(peer)
            outbox.pump(peer)
            return
        box = record.get("box")
        if not box:
            log.info("{peer} has no mailbox key; messages stay queued", peer=peer)
            return
        for msg in list(outbox.queues.get(peer, {}).values()):
            link = self.dialer.link_to(peer)
            if link is not None:
                return outbox.send_queued(link)
            try:
                deposited = yield self.registry.deposit(peer, self.sealed(peer, box, outbox.frame_of(msg)))
            except Exception as e:
                log.info("mailbox deposit for {peer} failed: {error}", peer=peer, error=e)
                return
            outbox.remove(peer, msg["id"])
            self.storage.mark_deposited(msg["id"], deposited["id"], now_ms(self.clock))
            self.storage.commit()
            self.events.emit({"event": "queued", "id": msg["id"], "to": peer,
                              "reason": "%s; in the registry mailbox until %s is back" % (reason, peer)})
            outbox.resolve(msg["id"], {"status": "queued", "via": "mailbox", "reason": reason})
        if not outbox.queues.get(peer):
            outbox.queues.pop(peer, None)

    def sealed(self, peer, box, frame):
        """*frame*, signed by us and sealed for *peer*'s mailbox key *box*: what a deposit carries."""
        return seal(self.identity.signing, self.name, peer, box,
                    json.dumps(frame, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))

    async def deposit_frame(self, peer, frame):
        """Seal *frame* into *peer*'s mailbox (a receipt, say): the registry's answer; P2PDError if *peer* has
        no mailbox key."""
        record = await self.pins.lookup(peer)
        if not record.get("box"):
            raise P2PDError("%s has no mailbox key" % peer)
        return await self.registry.deposit(peer, self.sealed(peer, record["box"], frame))


class MailboxFetcher:
    """Fetches our mailbox page by page, each item on its own. ``accept(frame, via, after_commit)`` stores one
    message; ``sender_ok(frame)`` (a coroutine) says whether a room message's sender is in the room; *receipts*
    (a :class:`.receipts.Receipts`) is owed a receipt for each message stored, and takes the receipts for ours.

    An item that can never be delivered (unreadable, forged, from a name nobody holds, or signed by a key other
    than the one pinned for its sender) is quarantined: kept in the store for the user to see, announced, and
    acknowledged, so it never holds up the items behind it. An item whose sender the registry cannot look up just
    now is left for a later fetch, and the fetch goes on past it. A registry that answers 429 is waited for as
    long as its ``Retry-After`` says (up to a minute), then asked again."""

    def __init__(self, name, identity, storage, registry, clock, events, pins, accept, sender_ok, receipts,
                 page=MAILBOX_PAGE):
        self.name = name
        self.identity = identity
        self.storage = storage
        self.registry = registry
        self.clock = clock
        self.events = events
        self.pins = pins
        self.accept = accept
        self.sender_ok = sender_ok
        self.receipts = receipts
        self.page = page
        self.fetching = Shared()

    def fetch(self):
        """Deferred (never failing): collect, verify, store and acknowledge what waits in our mailbox. Calls
        made while a fetch runs share it."""
        return self.fetching("mailbox", lambda: defer.ensureDeferred(self._fetch()).addErrback(self._failed))

    def _failed(self, failure):
        log.info("mailbox fetch failed: {error}", error=failure.getErrorMessage())

    async def _fetch(self):
        skipped = set()  # ids of items left for a later fetch
        while True:
            limit = min(MAX_PAGE, self.page + len(skipped))
            reply = await patiently(self.clock, self.registry.fetch, limit=limit)
            items = reply.get("messages") if isinstance(reply, dict) else None
            if not isinstance(items, list):
                raise P2PDError("the registry's mailbox answer has no message list")
            fresh = [item for item in items if isinstance(item, dict) and item.get("id") not in skipped]
            done = []  # stored (committed) or quarantined: the registry may forget them, in one request
            for item in fresh:
                if await self._take(item):
                    done.append(item["id"])
                else:
                    skipped.add(item.get("id"))
            await self._ack(done)
            if len(items) < limit or not fresh or len(skipped) >= MAX_SKIPPED:
                return

    async def _take(self, item):
        """Deliver one mailbox item (stored and committed), or quarantine or drop it; True once the registry may
        forget it, False if it is left for a later fetch."""
        item_id = item.get("id")
        if not isinstance(item_id, str) or not item_id:
            return False  # nothing to acknowledge it by: the registry never sends this
        try:
            payload = item.get("payload")
            if not isinstance(payload, str):
                raise SealedError("the item carries no sealed payload")
            sealed = open_sealed(payload, self.identity.box_private, self.name)
            if self.pins.is_blocked(sealed.sender_name):
                log.info("dropped mailbox item {id} from {sender}, who is blocked", id=item_id,
                         sender=sealed.sender_name)
                return True
            record = await patiently(self.clock, self.pins.lookup, sealed.sender_name)
            sealed.verify(record["key"])
            frame = wire.decode(sealed.payload)
            if frame["t"] not in ("msg", "ack") or frame.get("from", sealed.sender_name) != sealed.sender_name:
                raise SealedError("sealed content is not a message or receipt from its sender")
        except (SealedError, wire.FrameError, NoSuchPeer, IdentityMismatch) as e:
            self._quarantine(item, getattr(e, "message", None) or str(e))
            return True
        except Exception as e:
            log.info("mailbox item {id} from {sender} left for later: {error}", id=item_id,
                     sender=item.get("from"), error=getattr(e, "message", None) or e)
            return False
        done = defer.Deferred()
        if frame["t"] == "ack":
            self.receipts.got(sealed.sender_name, wire.ack_ids(frame), after_commit=lambda: done.callback(None))
            await done
            return True
        if frame.get("room") and not await self.sender_ok(frame):
            return True
        if not self.accept(frame, via="mailbox", after_commit=lambda: done.callback(None)):
            self._quarantine(item, "%s has used up the room its messages may take here" % sealed.sender_name)
            return True
        self.receipts.owe(frame["from"], frame["id"])
        await done  # committed: now the registry may forget it
        return True

    def _quarantine(self, item, reason):
        sender = item.get("from") if isinstance(item.get("from"), str) else None
        log.warn("mailbox item {id} from {sender} cannot be delivered, quarantined: {reason}", id=item["id"],
                 sender=sender, reason=reason)
        if self.storage.add_quarantined(item["id"], sender, reason, item.get("payload"), now_ms(self.clock)):
            self.storage.commit()
            self.events.emit({"event": "quarantined", "id": item["id"], "from": sender, "reason": reason})

    async def _ack(self, ids):
        """Let the registry forget *ids* (one request; one per id with a registry that has no batch route)."""
        if not ids:
            return
        try:
            await patiently(self.clock, self.registry.ack_many, ids)
            return
        except MethodNotAllowed:
            pass
        for item_id in ids:
            try:
                await patiently(self.clock, self.registry.ack, item_id)
            except NotFound:
                pass  # gone already (expired, or acknowledged by an earlier fetch)
