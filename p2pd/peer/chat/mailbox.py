"""The registry's mailbox, both ways: :class:`Depositor` seals the queued messages of a peer we cannot reach
into its mailbox (the registry sees only ciphertext), :class:`MailboxFetcher` collects, verifies, stores and
acknowledges what waits in ours."""

import json

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from p2pd.core import wire
from p2pd.core.clock import now_ms
from p2pd.core.sealed import SealedError, open_sealed, seal
from p2pd.errors import NoSuchPeer

log = Logger()

MAILBOX_PAGE = 50


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
            frame = outbox.frame_of(msg)
            token = seal(self.identity.signing, self.name, peer, box,
                         json.dumps(frame, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
            try:
                deposited = yield self.registry.deposit(peer, token)
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


class MailboxFetcher:
    """Fetches our mailbox page by page. ``accept(frame, via, after_commit)`` stores one message;
    ``sender_ok(frame)`` (a coroutine) says whether a room message's sender is in the room."""

    def __init__(self, name, identity, registry, pins, accept, sender_ok, page=MAILBOX_PAGE):
        self.name = name
        self.identity = identity
        self.registry = registry
        self.pins = pins
        self.accept = accept
        self.sender_ok = sender_ok
        self.page = page
        self._fetching = None  # [Deferred] of the callers of the fetch that runs

    def fetch(self):
        """Deferred (never failing): collect, verify, store and acknowledge what waits in our mailbox. Calls
        made while a fetch runs share it."""
        waiter = defer.Deferred()
        if self._fetching is not None:
            self._fetching.append(waiter)
            return waiter
        self._fetching = [waiter]
        defer.ensureDeferred(self._fetch()).addBoth(self._done)
        return waiter

    def _done(self, result):
        waiters, self._fetching = self._fetching, None
        if isinstance(result, Failure):
            log.info("mailbox fetch failed: {error}", error=result.getErrorMessage())
        for w in waiters:
            w.callback(None)

    async def _fetch(self):
        while True:
            reply = await self.registry.fetch(limit=self.page)
            messages = reply.get("messages", [])
            for item in messages:
                try:
                    sealed = open_sealed(item["payload"], self.identity.box_private, self.name)
                    record = await self.pins.lookup(sealed.sender_name)
                    sealed.verify(record["key"])
                    frame = wire.decode(sealed.payload)
                    if frame["t"] != "msg" or frame["from"] != sealed.sender_name:
                        raise SealedError("sealed content is not a message from its sender")
                except (SealedError, wire.FrameError, NoSuchPeer) as e:
                    log.warn("dropping an unreadable mailbox message {id} from {sender}: {error}",
                             id=item.get("id"), sender=item.get("from"), error=e)
                    await self.registry.ack(item["id"])
                    continue
                if frame.get("room") and not await self.sender_ok(frame):
                    await self.registry.ack(item["id"])
                    continue
                done = defer.Deferred()
                self.accept(frame, via="mailbox", after_commit=lambda d=done: d.callback(None))
                await done  # committed: now the registry may forget it
                await self.registry.ack(item["id"])
            if len(messages) < self.page:
                return
