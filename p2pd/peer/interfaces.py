"""The seams of the peer daemon, as zope.interface declarations.

The parts of a peer (chat, rooms, files, the paths that carry their bytes, the control socket) talk to each
other only through these. ``service.py`` builds the parts and hands each the others it needs, by these
interfaces; tests hand them fakes. ``verifyObject`` checks a part against its interface in the tests.

The rule that lets a new path (the UDP stream, a relay) plug in beside TCP: file transfers move their bytes
through :class:`IByteStream` (sending) and :class:`IStreamReceiver` (receiving), opened by an
:class:`IDataPaths`; nothing in ``files/``, ``chat/`` or the rooms learns which path carries them.
"""

from zope.interface import Attribute, Interface


class IEvents(Interface):
    """Events for the control socket's watchers: dicts ``{"event": KIND, ...}`` (see :mod:`p2pd.peer.facade`)."""

    def emit(event):
        """Hand *event* to every subscriber; a subscriber that raises is logged and the others still get it."""

    def subscribe(callback):
        """Call ``callback(event)`` for every event from now on."""

    def unsubscribe(callback):
        """Stop calling *callback* (no error if it was not subscribed)."""


class ICommits(Interface):
    """One SQLite commit per reactor turn for everything stored in it, then what that commit allows."""

    def schedule_flush():
        """Commit at the end of this reactor turn (once, however often it is asked)."""

    def after_commit(action):
        """Run ``action()`` after the next commit (acks and events that must not run ahead of the data)."""

    def flush():
        """Commit now, then run the actions that waited for it."""


class IThreads(Interface):
    """Where blocking work (hashing files, WAL checkpoints, disk writes) runs: threads in production, inline in
    unit tests, chosen by whoever builds the part, never by probing the reactor."""

    threaded = Attribute("True if work runs on other threads (callbacks then come back through call_in_reactor)")

    def run(f, *args):
        """Deferred[f(*args)], computed off the reactor thread."""

    def call_in_reactor(f, *args):
        """From any thread: run ``f(*args)`` in the reactor thread."""

    def start_thread(target, name):
        """A started daemon thread running ``target()`` (inline executors run nothing and return None)."""


class ILink(Interface):
    """An authenticated link to one peer (TLS + the line protocol, over whatever path carries it)."""

    peer = Attribute("the peer's canonical name, proven by its key")
    outgoing = Attribute("True if we dialled it")
    closed = Attribute("True once the link is gone")
    since = Attribute("when it came up (clock seconds)")
    inflight = Attribute("set of message ids sent on it and not acknowledged yet")
    backlog = Attribute("None, or the list of received frames held while an earlier one waits (per-sender order)")
    when_ready = Attribute("Deferred that fires with the link once its peer is verified (fails if it never is)")

    def send(frame):
        """Send one frame (a dict of :mod:`p2pd.core.wire`); dropped if the link is closed."""

    def close():
        """End the link once what was sent has gone (cut after a short grace)."""

    peer_udp_port = Attribute("the port of the peer's UDP socket, as its hello said (None: it takes no UDP streams)")

    def keying_material(label, size):
        """*size* bytes exported from the link's TLS session for *label* (RFC 5705): the same at both ends."""

    def peer_address():
        """Where the peer is connected from (an IAddress with ``host`` and ``port``): where a data path to it
        may be dialled."""


class ILinkHost(Interface):
    """What a link (:class:`p2pd.peer.links.link.PeerLink`) reports to: the daemon that owns it."""

    name = Attribute("our own peer name, sent in hello")
    udp_port = Attribute("our UDP socket's port, sent in hello (None until it is bound)")

    def tls_peer_key(transport):
        """The key the peer proved in *transport*'s TLS handshake (raises IdentityMismatch if none)."""

    def verify_peer(name, key):
        """Deferred that fails unless *key* is the key the registry (and our pin) holds for *name*."""

    def link_up(link):
        """*link* is authenticated and ready."""

    def link_down(link):
        """*link*, once ready, closed."""

    def link_frame(link, frame):
        """A decoded frame (not hello, ping, pong or bye) from an authenticated *link*."""


class IPresenceHost(Interface):
    """What :class:`p2pd.peer.presence.Presence` keeps registered."""

    name = Attribute("our peer name")
    addresses = Attribute('{"tcp": [...], "udp": [...], "public": ...}: what register() publishes')

    def register():
        """Deferred[the registry's record of us]: register our name, keys and addresses."""

    def heartbeat_interval(record):
        """Seconds until the next heartbeat, given the record the registry returned."""

    def registry_changed(state, message):
        """The registry became *state* ("online", "unreachable") for the reason *message*."""


class IDialer(Interface):
    """Authenticated links to peers, reused while they are up."""

    def dial(peer):
        """Deferred[ILink] to *peer*: the link that is up, one being set up, or a new one. Fails with
        NoSuchPeer, PeerOffline, LinkFailed or IdentityMismatch."""

    def link_to(peer):
        """The ILink to *peer* that is up, or None."""


class IOutbox(Interface):
    """What we send (:class:`p2pd.peer.chat.outbox.Outbox`): stored and committed first, then queued per
    recipient in ``seq`` order until acknowledged or taken by the registry mailbox."""

    def send_message(to, text, wait):
        """Deferred of the outcome: delivered, or queued (see :class:`p2pd.peer.facade.DaemonFacade`)."""

    def dispatch(msg, wait, announce=True):
        """A stored and committed message (rooms store their copies themselves): queue it and get it moving."""

    def acked(link, msg_id):
        """*link*'s peer acknowledged *msg_id*."""

    def refused(link, msg_id, reason):
        """*link*'s peer answered *msg_id* with an error: True if it was ours in flight (it failed)."""

    def send_queued(link):
        """Send on *link* what waits for its peer and is not in flight on it yet."""

    def link_down(link):
        """*link*, the current one to its peer, dropped: what was in flight on it goes again."""

    def count(peer=None):
        """How many messages wait (for *peer*, or for anybody)."""

    def pump_all():
        """Get every recipient's queue moving (links, else the mailbox, else later)."""


class IFrameHandler(Interface):
    """A part that takes some kinds of link frames (files: offers and answers; rooms: room events)."""

    kinds = Attribute("frozenset of the frame kinds (``t``) it takes")

    def frame(link, frame):
        """One frame of one of *kinds* from an authenticated *link*; errors go back to the peer as error
        frames, never up the stack."""

    def link_error(link, frame):
        """An ``error`` frame whose ``ref`` may name something of ours: True if it did (and was handled)."""

    def link_down(link):
        """*link* closed: fail or requeue what waited on it."""

    def stop():
        """The daemon stops: end what runs (it may be resumed after a restart)."""


class IByteStream(Interface):
    """The sending side of a data path: ordered, reliable, flow-controlled bytes to one peer.

    A push producer registered here is paused while the path cannot take more and resumed when it can; a
    producer must not reuse a buffer it wrote until it is resumed (a path may send from it in place)."""

    closed = Attribute("True once the stream is gone (nothing written is sent after that)")

    def write(data):
        """Queue *data* (bytes-like) for sending, in order."""

    def registerProducer(producer, streaming):
        """Register the IPushProducer that writes to this stream."""

    def unregisterProducer():
        """No producer any more."""

    def pauseReceiving():
        """Stop handing received bytes up (the receiver's disk is behind); the path slows the sender."""

    def resumeReceiving():
        """Hand received bytes up again."""

    def close(abort=False):
        """End the stream: after what is queued is sent, or at once with *abort* (what is queued is dropped).
        Nothing written after close is sent. A graceful close waits for the peer to take the bytes: the caller
        bounds it in time (and aborts)."""


class IStreamReceiver(Interface):
    """What a data path feeds: the session of one transfer, which reads records out of its opener."""

    opener = Attribute("the datastream.Opener whose space() the path reads into")
    preamble = Attribute("bytes the dialling side writes before anything else (names the session)")

    def stream_started(stream):
        """The path is up: *stream* (an IByteStream) carries our bytes to the peer."""

    def stream_arrived():
        """Bytes were put into ``opener`` (its filled() was called): take the records they completed."""

    def stream_moving():
        """Bytes that had waited were sent: a slow path is still moving (a silence timer starts again)."""

    def stream_lost(reason):
        """The path is gone (*reason* a Failure)."""


class IDataPaths(Interface):
    """Opens the data path of one transfer with a peer, beside the link that negotiated it."""

    def open(link, session_id, receiver, transport="tcp"):
        """Start a data path for *receiver* (an IStreamReceiver) to *link*'s peer; its bytes name *session_id*;
        *transport* (``"tcp"``, ``"udp"``) says which path the offer chose (a path of one kind ignores it).
        Returns a Deferred that fails if the path cannot be opened (it fires None once started)."""

    def forget(session_id):
        """Stop waiting for an incoming path of *session_id* (the transfer ended first)."""


class IStore(Interface):
    """The peer's SQLite store (:mod:`p2pd.peer.storage`): every write joins the open group, visible to reads
    at once, durable only after :meth:`commit` (which :class:`ICommits` runs once per reactor turn)."""

    pending = Attribute("True while there are writes that commit() has not made durable")

    def commit():
        """Make every write so far durable; cheap if nothing is pending. Raises StorageError."""

    def checkpoint():
        """Copy the WAL back into the database; safe from a worker thread (IThreads.run)."""

    def close():
        """Commit, checkpoint and close; closing twice is harmless."""


class IChatStore(IStore):
    """What chat, the outbox, pins and rooms keep: messages (dicts of ``storage.MESSAGE_FIELDS``), the outbox,
    sequence numbers and settings. Times are ms, passed in by the caller."""

    def add_outgoing(recipient, body, now_ms, room=None, conversation=None):
        """Store a new ``pending`` message for *recipient*, in history and the outbox, with its next seq."""

    def add_room_post(room, body, recipients, now_ms):
        """``(post, copies)``: the post shown once in the room's history, a copy per recipient in the outbox."""

    def add_incoming(msg, now_ms):
        """Store a message from a peer as ``received``; False if its id is already stored."""

    def mark_delivered(msg_id, via, now_ms, recipient=None):
        """Acknowledged (*via* "direct" or "mailbox"; by *recipient*, if given, which must be the message's):
        ``delivered``; True if this changed it."""

    def mark_deposited(msg_id, mailbox_id, now_ms):
        """Taken by the registry mailbox: ``queued``; True if it was pending."""

    def mark_failed(msg_id, reason, now_ms):
        """Given up: ``failed`` with *reason*; True if it was pending or queued."""

    def outbox(recipient=None, limit=1000):
        """Undelivered outgoing messages in sending order."""

    def outbox_recipients():
        """The recipients with messages in the outbox, sorted."""

    def outbox_count():
        """How many messages wait in the outbox."""

    def last_seq(sender, conversation):
        """The highest seq received from *sender* in *conversation*, 0 if none."""

    def has_message(msg_id):
        """Whether a message with this id is stored."""

    def get_message(msg_id):
        """The stored message with this id, or None."""

    def history(conversation=None, limit=100, before_rowid=None):
        """The newest *limit* messages of *conversation* (None: of all), oldest first."""

    def conversations():
        """Every conversation with its count and latest ``ts``, most recent first."""

    def get(key, default=None):
        """The setting *key*, or *default*."""

    def settings_with_prefix(prefix):
        """``(key, value)`` of every setting whose key starts with *prefix*."""

    def put(key, value):
        """Set *key* to a JSON-able *value*."""

    def add_quarantined(item_id, sender, reason, payload, now_ms):
        """Keep a mailbox item that cannot be delivered (the newest 1,000 are kept); False if kept already."""

    def quarantined(limit=100):
        """The newest quarantined items, newest first: ``{"id", "from", "reason", "received_at"}``."""

    def quarantine_count():
        """How many quarantined items are kept."""

    def received_bytes(sender):
        """Bytes of the message bodies stored from *sender*, for its quota."""

    def owe_receipt(sender, msg_id):
        """Remember that *sender* gets a receipt for its message *msg_id*, which we collected from the mailbox."""

    def owed_receipts(sender, limit=1000):
        """Message ids we owe *sender* a receipt for."""

    def receipt_senders():
        """The senders we owe receipts to."""

    def receipts_sent(sender, ids):
        """The receipts for *ids* are out."""

    def in_mailbox_count():
        """How many of our messages wait in a mailbox for their recipient."""

    def expire_deposits(before_ms, reason, now_ms, limit=1000):
        """Deposits made before *before_ms* that got no receipt become ``failed``: their ``(id, recipient)``."""


class IFileStore(IStore):
    """What file transfers keep: their records (JSON dicts with ``tid``, ``direction``, ``peer``, ``status``,
    ``fingerprint``) and the hash cache of offered files."""

    def put_transfer(record, now_ms):
        """Insert or replace a transfer record."""

    def get_transfer(tid):
        """The record of transfer *tid*, or None."""

    def transfers(limit=100, statuses=None):
        """The most recently updated records, newest first (only those in *statuses*, if given)."""

    def find_transfer(peer, direction, fingerprint, statuses):
        """The newest record of this offer in one of *statuses*, or None."""

    def cached_hash(path, st):
        """``(root, digests)`` of *path* if it still matches the ``os.stat_result`` *st*, else None."""

    def put_hash(path, st, root, digests):
        """Remember *root* and *digests* for *path* as *st* describes it."""

    def put_preview(tid, index, jpeg, now_ms):
        """Keep *jpeg* (checked already) as the preview of file *index* of incoming transfer *tid*."""

    def preview(tid, index):
        """The preview of file *index* of transfer *tid*, or None."""
