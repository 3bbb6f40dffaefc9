"""What the peer daemon offers to its control socket (and so to p2pctl). The control protocol maps one request
``{"id": N, "cmd": "<name>", ...args}`` onto one method here; a method returns a JSON-able value or a Deferred
of one, and raises :mod:`p2pd.errors` exceptions whose ``code`` and ``message`` go back to the client.

Events are dicts ``{"event": "<kind>", ...}`` pushed to every subscriber:

    {"event": "message", "message": {id, conversation, sender, recipient, room, seq, ts, body, direction, ...}}
    {"event": "delivered", "id": ID, "to": NAME, "via": "direct"|"mailbox"}
    {"event": "queued", "id": ID, "to": NAME, "reason": "..."}        (peer offline: waiting in outbox/mailbox)
    {"event": "failed", "id": ID, "to": NAME, "reason": "..."}
    {"event": "peer", "name": NAME, "state": "online"|"offline"|"connected"|"disconnected"}
    {"event": "registry", "state": "online"|"unreachable", "message": "..."}
    {"event": "quarantined", "id": MAILBOX_ID, "from": NAME, "reason": "..."}  (a mailbox item set aside)
    {"event": "transfer", ...a transfer's listing entry}                (an offer, a change of a transfer's state)
    {"event": "image", "tid", "peer", "name", "saved", "inbox", "format", "width", "height",
     "check": "ok"|"invalid"|"refused"|"unchecked", "problem"?}        (a received image, checked once it landed)
"""

from typing import Any, Protocol, runtime_checkable


class FilesFacade(Protocol):
    """The file commands (:class:`p2pd.peer.files.manager.Transfers`); each returns a JSON-able value or a
    Deferred of one. ``send`` and ``get`` call *progress* with snapshots, and cancel their transfer when their
    Deferred is cancelled."""

    def send(self, to: str, paths: list, progress=None, transport=None): ...

    def get(self, peer: str, path: str, progress=None, transport=None): ...

    def ls(self, peer: str, path: str = ""): ...

    def accept(self, tid: str): ...

    def reject(self, tid: str): ...

    def cancel(self, tid: str): ...

    def list(self, limit: int = 100) -> list: ...

    def preview(self, tid: str, index: int | None = None) -> dict:
        """The kept preview of an image offered to us: {"tid", "index", "name", "image", "jpeg": base64,
        "bytes"}; NotFound saying why when there is none."""


@runtime_checkable
class DaemonFacade(Protocol):
    name: str
    transfers: Any  # a FilesFacade, or None when the daemon takes no files

    def status(self) -> dict:
        """{"name", "key", "fingerprint", "data_dir", "addresses": {"tcp": [...], "udp": [...], "public": ...},
        "registry": {"url", "state": "online"|"unreachable"|"starting", "message"}, "outbox": int,
        "quarantined": int, "links": [{"peer", "direction", "since"}], "version"}"""

    def peers(self):
        """Deferred[list of online peer records from the registry, without ourselves]."""

    def whois(self, name: str):
        """Deferred[dict]: the registry record of *name* plus {"reachability": {"link": "connected"|"none",
        "direct": bool, "last_error": str|None}}; NoSuchPeer if unknown."""

    def send_message(self, to: str, text: str, wait: float = 10.0):
        """Deferred[{"id", "to", "status": "delivered"|"queued", "via": "direct"|"mailbox"|"outbox"}]: fires when
        the recipient acknowledged it, or when it is known to be queued (peer offline/unreachable, or *wait*
        seconds passed). NoSuchPeer for an unknown name, BadRequest for empty/oversized text."""

    def history(self, conversation: str | None = None, limit: int = 100) -> list:
        """Stored messages, oldest first (the newest *limit*)."""

    def delete_room(self, room: str):
        """Deferred[{"id", "deleted": True}]: delete a room we own; Forbidden if we do not, NoSuchRoom."""

    def room_members(self, room: str):
        """Deferred[the other members of *room* a post reaches]; NoSuchRoom, NotMember."""

    def conversation_key(self, name: str) -> str:
        """The conversation *name* stands for: a peer's name, or ``#`` and a room."""

    def block(self, name: str) -> dict:
        """{"name", "blocked": true}: *name*'s links, messages, offers and deposits are refused from now on."""

    def unblock(self, name: str) -> dict:
        """{"name", "blocked": false, "was_blocked": bool}."""

    def blocked(self) -> list:
        """The names on the block list, sorted."""

    def quarantined(self, limit: int = 100) -> list:
        """Mailbox items that could not be delivered, newest first: [{"id", "from", "reason", "received_at"}]."""

    def subscribe(self, callback) -> None:
        """Call callback(event_dict) for every event until unsubscribe(callback)."""

    def unsubscribe(self, callback) -> None:
        ...

    def rooms(self):
        """Deferred[every room: {"id", "name", "creator", "created_at", "member_count"}]."""

    def create_room(self, room: str):
        """Deferred[the room's view: the fields of ``rooms`` plus "members"]; RoomExists if a room of that name (ignoring case) exists. Does not join."""

    def join_room(self, room: str):
        """Deferred[the room's view with us in it]; NoSuchRoom, AlreadyMember."""

    def leave_room(self, room: str):
        """Deferred[the room's view without us]; NoSuchRoom, NotMember."""

    def post_room(self, room: str, text: str):
        """Deferred[{"id", "room", "recipients", "status": "sent"}] once stored and queued for every member;
        NoSuchRoom, NotMember, BadRequest."""
