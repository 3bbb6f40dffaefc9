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

    def send(frame):
        """Send one frame (a dict of :mod:`p2pd.core.wire`); dropped if the link is closed."""


class IDialer(Interface):
    """Authenticated links to peers, reused while they are up."""

    def dial(peer):
        """Deferred[ILink] to *peer*: the link that is up, one being set up, or a new one. Fails with
        NoSuchPeer, PeerOffline, LinkFailed or IdentityMismatch."""

    def link_to(peer):
        """The ILink to *peer* that is up, or None."""


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

    def open(link, session_id, receiver):
        """Start a data path for *receiver* (an IStreamReceiver) to *link*'s peer; its bytes name *session_id*.
        Returns a Deferred that fails if the path cannot be opened (it fires None once started)."""

    def forget(session_id):
        """Stop waiting for an incoming path of *session_id* (the transfer ended first)."""
