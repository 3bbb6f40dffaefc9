"""Delivery receipts for what went through the mailbox, and the report of what expired there unread.

A message we collect from our mailbox is acknowledged to its sender like one that came over a link: with an
``ack`` frame, sent on the link to the sender (dialled if it is online), else sealed into the sender's own mailbox. The
receipt is owed from the commit that stored the message (:mod:`p2pd.peer.storage.receipts`), so a crash
delays it but never loses it. The sender then shows the message ``delivered`` (via "mailbox").

A deposit of ours that nobody collected before the registry dropped it (``DEPOSIT_TTL``) is reported: the
message becomes ``failed`` with the reason, and a ``failed`` event says so. A receipt that still comes later
(the recipient collected it just before the end and its receipt was on its way) makes it ``delivered``."""

from twisted.internet import defer
from twisted.logger import Logger

from p2pd.core import wire
from p2pd.core.clock import now_ms
from p2pd.errors import IdentityMismatch, NoSuchPeer
from p2pd.peer.chat.shared import Shared, patiently

log = Logger()

DEPOSIT_TTL = 7 * 86400  # seconds the registry keeps a deposit (p2pd.registry.schema.MAILBOX_TTL; a test checks)
EXPIRY_GRACE = 3600  # seconds past that before we call it expired: a late receipt may be on its way
EXPIRY_SWEEP = 3600.0  # seconds between two looks for expired deposits
FIRST_SWEEP = 60.0  # seconds after start of the first (after the first mailbox fetch brought the receipts)
IDS_PER_DEPOSIT = 500  # ids in one sealed receipt (the registry takes 64 KiB per deposit)
EXPIRED = "not collected within %d days: the registry dropped it from the mailbox unread" % (DEPOSIT_TTL // 86400)


class Receipts:
    """Receipts both ways for one peer (*name*). *seal_to(peer, frame)* (a coroutine) seals *frame* for *peer*'s
    mailbox and deposits it."""

    def __init__(self, name, storage, clock, commits, events, pins, dialer, seal_to):
        self.name = name
        self.storage = storage
        self.clock = clock
        self.commits = commits
        self.events = events
        self.pins = pins
        self.dialer = dialer
        self.seal_to = seal_to
        self.sending = Shared()
        self._sweep = None

    def start(self):
        self._sweep = self.clock.callLater(FIRST_SWEEP, self._sweep_now)

    def stop(self):
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None

    # the receipts we owe

    def owe(self, sender, msg_id):
        """We are storing *sender*'s message *msg_id* from the mailbox: its receipt goes after the commit."""
        self.storage.owe_receipt(sender, msg_id)
        self.commits.after_commit(lambda: self.send(sender))

    def send(self, sender):
        """Deferred (never failing): send what we owe *sender*, on its link or into its mailbox."""
        return self.sending(sender, lambda: defer.ensureDeferred(self._send(sender)).addErrback(
            lambda f: log.info("receipts for {peer} wait: {error}", peer=sender, error=f.getErrorMessage())))

    def send_all(self):
        for sender in self.storage.receipt_senders():
            self.send(sender)

    def link_up(self, link):
        if self.storage.owed_receipts(link.peer, limit=1):
            self.send(link.peer)

    async def _send(self, sender):
        while True:
            ids = self.storage.owed_receipts(sender, limit=IDS_PER_DEPOSIT)
            if not ids:
                return
            if self.pins.is_blocked(sender):
                self.storage.receipts_sent(sender, ids)  # a blocked peer hears nothing from us
            else:
                link = await self._link(sender)
                if link is not None:
                    for frame in wire.acks(ids):
                        link.send(frame)
                else:
                    try:
                        await patiently(self.clock, self.seal_to, sender, {"t": "ack", "ids": ids})
                    except (NoSuchPeer, IdentityMismatch) as e:  # nobody, or another key, holds the name now
                        log.info("receipts for {peer} dropped: {error}", peer=sender, error=e.message)
                self.storage.receipts_sent(sender, ids)
            self.storage.commit()

    async def _link(self, sender):
        """The link to *sender*: the one that is up, else a new one if it is online and not in its back-off."""
        link = self.dialer.link_to(sender)
        if link is not None or self.dialer.wait_before_dialling(sender) > 0:
            return link
        try:
            return await self.dialer.dial(sender)
        except Exception as e:
            self.dialer.failed(sender, e)
            return None

    # the receipts we get

    def got(self, sender, ids, after_commit):
        """*sender* collected our messages *ids* from its mailbox (a sealed receipt from ours): delivered."""
        now = now_ms(self.clock)
        delivered = [i for i in ids if self.storage.mark_delivered(i, "mailbox", now, recipient=sender)]
        for msg_id in delivered:
            self.commits.after_commit(
                lambda msg_id=msg_id: self.events.emit({"event": "delivered", "id": msg_id, "to": sender,
                                                        "via": "mailbox"}))
        self.commits.after_commit(after_commit)
        self.commits.schedule_flush()

    # deposits that expired

    def _sweep_now(self):
        self._sweep = self.clock.callLater(EXPIRY_SWEEP, self._sweep_now)
        self.expire()

    def expire(self):
        """Report our deposits that the registry dropped unread; their number."""
        now = now_ms(self.clock)
        before = now - (DEPOSIT_TTL + EXPIRY_GRACE) * 1000
        expired = []
        while True:
            batch = self.storage.expire_deposits(before, EXPIRED, now)
            expired += batch
            if len(batch) < 1000:
                break
        if not expired:
            return 0
        self.storage.commit()
        for msg_id, peer in expired:
            log.info("message {id} to {peer} expired in the mailbox unread", id=msg_id, peer=peer)
            self.events.emit({"event": "failed", "id": msg_id, "to": peer, "reason": EXPIRED})
        return len(expired)
