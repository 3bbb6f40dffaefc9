"""The registry's room routes, a mixin of :class:`p2pd.registry.api.RegistryAPI` (see :mod:`p2pd.registry.views`).

A room is owned by the peer that created it (``owner`` in its view) until that peer releases its name; then by
nobody, and it lives on until the pruner finds it idle. Only the owner may delete it (``DELETE /v1/rooms/{room}``);
General is nobody's and cannot be deleted or left. One name owns at most ``rooms-per-owner`` rooms, and new rooms
are refused while the store is nearly full (:mod:`p2pd.registry.memory`).
"""

from twisted.internet import defer

from p2pd.core.names import canonical_name, canonical_room, room_display
from p2pd.errors import BadRequest, Forbidden, NoSuchRoom
from p2pd.registry.store import GENERAL
from p2pd.registry.views import app, flag_arg, page_args, room_view


class RoomRoutes:
    """Listing, creating, reading, deleting, joining and leaving rooms."""

    @app.route("/v1/rooms", methods=["GET"])
    @defer.inlineCallbacks
    def list_rooms(self, request):
        self.limit(request, self.reads)
        after, limit = page_args(request)
        page, cursor = yield self.store.list_rooms(after, limit)
        return self.reply(request, {"rooms": [room_view(r, with_members=False) for r in page], "next": cursor})

    @app.route("/v1/rooms", methods=["POST"])
    @defer.inlineCallbacks
    def create_room(self, request):
        self.limit(request, self.writes)
        raw, body = self.read_body(request)
        entry = yield self.authenticate(request, raw)
        if set(body) - {"name", "join"}:
            raise BadRequest("unknown fields: %s" % ", ".join(sorted(set(body) - {"name", "join"})))
        join = body.get("join", True)
        if not isinstance(join, bool):
            raise BadRequest("'join' must be true or false")
        display = room_display(body.get("name"))
        room = canonical_room(display)
        self.memory.admit_claim("new rooms")
        yield self.store.create_room(room, {"name": display, "creator": entry.name, "created_at": self.now_ms()},
                                     max_rooms=self.limits.rooms_per_owner)
        if join:
            yield self.store.join_room(room, entry.name)
        created = yield self.store.get_room(room)
        return self.reply(request, room_view(created), 201)

    @app.route("/v1/rooms/<string:room>", methods=["GET"])
    @defer.inlineCallbacks
    def get_room(self, request, room):
        """The room and its members; with ``?online=true`` only the members online now (``member_count`` still
        counts them all), which is what a post to the room needs to reach."""
        self.limit(request, self.reads)
        online = flag_arg(request, "online")
        entry = yield self.store.get_room(canonical_room(room), self.now_ms() if online else None)
        if entry is None:
            raise NoSuchRoom("room %s does not exist" % room)
        return self.reply(request, room_view(entry))

    @app.route("/v1/rooms/<string:room>", methods=["DELETE"])
    @defer.inlineCallbacks
    def delete_room(self, request, room):
        """Delete a room with all its memberships: signed by its owner."""
        self.limit(request, self.writes)
        room = canonical_room(room)
        if room == GENERAL:
            raise Forbidden("General is everyone's room: it cannot be deleted")
        entry = yield self.authenticate(request, request.content.read())
        yield self.store.delete_room(room, owner=entry.name)
        return self.reply(request, {"id": room, "deleted": True})

    @defer.inlineCallbacks
    def _membership(self, request, room, name, change, *args):
        self.limit(request, self.writes)
        room, name = canonical_room(room), canonical_name(name)
        yield self.authenticate(request, request.content.read(), as_name=name)
        yield change(room, name, *args)
        entry = yield self.store.get_room(room)
        return self.reply(request, room_view(entry))

    @app.route("/v1/rooms/<string:room>/members/<string:name>", methods=["PUT"])
    def join_room(self, request, room, name):
        return self._membership(request, room, name, self.store.join_room)

    @app.route("/v1/rooms/<string:room>/members/<string:name>", methods=["DELETE"])
    def leave_room(self, request, room, name):
        if canonical_room(room) == GENERAL:
            raise Forbidden("everyone stays in General")
        return self._membership(request, room, name, self.store.leave_room, self.now_ms())
