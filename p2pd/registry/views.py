"""What the registry's route modules share: the one Klein app they all register on, the JSON views of peers and
rooms, and the query arguments that several routes take.

The routes are split by resource (:mod:`p2pd.registry.api` peers, :mod:`p2pd.registry.rooms_api` rooms,
:mod:`p2pd.registry.mailbox_api` the mailbox) into mixins of :class:`p2pd.registry.api.RegistryAPI`; each
decorates its methods with this module's ``app``, so the API is still one Klein app with one table of routes
(``RegistryAPI.app.url_map``) that the OpenAPI document is checked against.
"""

import re

from klein import Klein

from p2pd.errors import BadRequest

app = Klein()

MAX_PAGE = 200


def page_args(request):
    """``after`` cursor and ``limit`` from the query string."""
    after = request.args.get(b"after", [b""])[0].decode("utf-8", "replace")
    raw = request.args.get(b"limit", [b"50"])[0]
    if not re.fullmatch(rb"[0-9]{1,3}", raw) or not 1 <= int(raw) <= MAX_PAGE:
        raise BadRequest("limit must be an integer from 1 to %d" % MAX_PAGE)
    return after, int(raw)


def flag_arg(request, name: str) -> bool:
    """A ``?name=true|false`` query argument (false when absent); BadRequest for any other value."""
    raw = request.args.get(name.encode(), [b"false"])[0]
    if raw not in (b"true", b"false"):
        raise BadRequest("%s must be true or false" % name)
    return raw == b"true"


def peer_view(entry, now_ms) -> dict:
    view = {"name": entry.name, "key": entry.key, "online": entry.online(now_ms),
            "lease_expires": entry.lease if entry.online(now_ms) else None}
    view.update(entry.record)
    return view


def room_view(entry, with_members=True) -> dict:
    view = {"id": entry.name, "name": entry.record["name"], "creator": entry.record.get("creator"),
            "owner": entry.owner, "created_at": entry.record.get("created_at"), "member_count": entry.member_count}
    if with_members:
        view["members"] = entry.members
    return view
