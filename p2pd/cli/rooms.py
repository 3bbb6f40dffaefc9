"""Chat room commands: ``create``, ``join``, ``leave``, ``groups``, ``users``.

The registry keeps who is in which room; every peer is in General from its first start. Each failure the
chatroom of the seed lists has its own message and a non-zero exit: the room exists already (create), does not
exist (join, leave), you are already a member (join), you are not a member (leave), General cannot be left.
"""

from p2pd.cli import basic, exits, render
from p2pd.cli.basic import show
from p2pd.cli.command import arg, command
from p2pd.cli.sanitize import clean, table
from p2pd.core.names import room_display
from p2pd.errors import InvalidName

ROOM = arg("room", metavar="ROOM")


def room_name(text):
    try:
        return room_display(text)
    except InvalidName as e:
        raise exits.CliError(clean(e.message), exits.USAGE, e.code) from None


def members_text(room) -> str:
    members = [clean(m) for m in room.get("members") or []]
    if not members:
        return "no members yet: p2pctl join %s" % clean(room.get("name"))
    return "%d member%s%s" % (len(members), "" if len(members) == 1 else "s",
                              (": " + ", ".join(members[:20]) + (", ..." if len(members) > 20 else "")) if members
                              else "")


def _change(cmd, done):
    def run(ctx, args):
        room = ctx.request(cmd, room=room_name(args.room))
        if ctx.json:
            ctx.emit(room)
        else:
            ctx.say("%s %s (%s)" % (done, clean(room.get("name")), members_text(room)))
        return exits.OK

    return run


command("create", "create a chat room (then join it to take part)", [ROOM])(_change("create", "created room"))
command("join", "join a chat room", [ROOM])(_change("join", "joined"))
command("leave", "leave a chat room (everyone stays in General)", [ROOM])(_change("leave", "left"))


@command("delete", "delete a chat room you created, with its member list (not General)", [ROOM])
def delete(ctx, args):
    result = ctx.request("delete", room=room_name(args.room))
    if ctx.json:
        ctx.emit(result)
    else:
        ctx.say("deleted room %s" % clean(args.room))
    return exits.OK


def groups_lines(rooms) -> list:
    if not rooms:
        return ["no rooms"]
    rows = [(clean(r.get("name")), str(r.get("member_count", "")), clean(r.get("creator")) or "-")
            for r in rooms if isinstance(r, dict)]
    return table(("ROOM", "MEMBERS", "CREATED BY"), rows)


@command("groups", "list the chat rooms")
def groups(ctx, args):
    return show(ctx, ctx.request("groups"), groups_lines)


@command("users", "list the users who are online")
def users(ctx, args):
    return show(ctx, ctx.request("users"), render.peers_lines)


@command("public", "send a message to every member of a room", [ROOM, arg("text", metavar="TEXT", nargs="+")])
def public(ctx, args):
    result = ctx.request("public", room=room_name(args.room), text=" ".join(args.text))
    if ctx.json:
        ctx.emit(result)
    else:
        n = len(result.get("recipients") or [])
        ctx.say("sent to %s (%d other member%s)" % (clean(result.get("room")), n, "" if n == 1 else "s"))
    return exits.OK


command("private", "send a private message to one user (the same as msg)",
        [arg("peer", metavar="USER"), arg("text", metavar="TEXT", nargs="+")])(basic.msg)
