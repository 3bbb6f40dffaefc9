"""``p2pctl shell``: a chatroom session (the one the project's first design shows), on top of the peer daemon.

It greets you, shows events as they arrive (room messages, private messages, who joined or left a room) above
the line you are typing, and accepts exactly these commands::

    create ROOM | join ROOM | leave ROOM | groups | users | public ROOM MESSAGE | private USER MESSAGE | exit | help

``exit`` (or Ctrl-D) leaves the shell; the daemon keeps running and keeps collecting messages. With stdin not a
terminal each line is a command, run in order, and the shell ends at the end of the input.
"""

import re
import threading

from p2pd.cli import exits, render
from p2pd.cli.chat import Interactive
from p2pd.cli.command import command
from p2pd.cli.sanitize import clean

HELP = """commands:
  create ROOM              create a group chat
  join ROOM                join a group chat
  leave ROOM               leave a group chat
  groups                   list the group chats
  users                    list the users online
  public ROOM MESSAGE      send MESSAGE to everyone in ROOM
  private USER MESSAGE     send MESSAGE to USER only
  exit                     leave the shell (your daemon keeps collecting messages)"""

USAGE = {"create": "create ROOM", "join": "join ROOM", "leave": "leave ROOM", "public": "public ROOM MESSAGE",
         "private": "private USER MESSAGE"}


def event_text(event):
    """What the shell shows for a daemon event, or None for events it does not show."""
    kind = event.get("event")
    if kind == "message":
        msg = event.get("message") or {}
        if msg.get("direction") != "in":
            return None
        if msg.get("room"):
            return "In group %s, %s: %s" % (clean(msg["room"]), clean(msg.get("sender")), clean(msg.get("body")))
        return "Private message from %s: %s" % (clean(msg.get("sender")), clean(msg.get("body")))
    if kind == "room":
        if event.get("room") == "General" and event.get("change") == "joined":
            return "%s joined the room 'General'" % clean(event.get("name"))
        verb = "has joined" if event.get("change") == "joined" else "has left"
        return "%s %s group chat '%s'." % (clean(event.get("name")), verb, clean(event.get("room")))
    if kind == "transfer" and event.get("direction") == "in" and event.get("status") == "offered":
        return render.transfer_line(event)
    return None


class Shell(Interactive):
    def __init__(self, ctx):
        super().__init__(ctx, None, prompt="> ")
        self.name = None

    def run(self):
        ctx = self.ctx
        status = ctx.request("status")
        self.name = status.get("name")
        ctx.request("watch")
        self.show("Hello %s! You joined the room 'General'. Type help for the commands." % clean(self.name))

        events = threading.Thread(target=self.relay, name="p2pctl-shell-events", daemon=True)
        events.start()
        interactive = ctx.stdin.isatty()
        try:
            while True:
                try:
                    self.reading = True
                    line = input(self.prompt) if interactive else ctx.stdin.readline()
                except (EOFError, KeyboardInterrupt):
                    if interactive:
                        ctx.stdout.write("\n")
                    break
                finally:
                    self.reading = False
                if not interactive and not line:
                    break
                if self.execute(line.strip()) is False:
                    break
        finally:
            self.close(events)
        return self.outcome()

    def execute(self, line):
        """Run one command line; False to leave the shell."""
        if not line:
            return True
        word, _, rest = line.partition(" ")
        rest = rest.strip()
        handler = getattr(self, "do_" + word, None)
        if handler is None:
            self.show("unknown command %r; type help for the commands" % clean(word))
            return True
        try:
            return handler(rest)
        except exits.DaemonError as e:
            self.show(in_shell(clean(e.message)))
        except exits.CliError as e:
            self.show(in_shell(clean(e.message)))
            if e.exit_code in (exits.NO_DAEMON, exits.TEMPFAIL):
                return False
        return True

    def _one(self, cmd, rest):
        if not rest or " " in rest:
            self.show("usage: " + USAGE[cmd])
            return None
        return self.ctx.request(cmd, room=rest)

    def do_help(self, rest):
        self.show(HELP)

    def do_exit(self, rest):
        return False

    def do_create(self, rest):
        room = self._one("create", rest)
        if room:
            self.show("New group chat '%s' created successfully! (join it to take part)" % clean(room.get("name")))

    def do_join(self, rest):
        room = self._one("join", rest)
        if room:
            self.show("You have joined group chat '%s'." % clean(room.get("name")))

    def do_leave(self, rest):
        room = self._one("leave", rest)
        if room:
            self.show("You have left group chat '%s'." % clean(room.get("name")))

    def do_groups(self, rest):
        rooms = self.ctx.request("groups")
        self.show("\n".join(["available groups:"] + [clean(r.get("name")) for r in rooms]))

    def do_users(self, rest):
        peers = self.ctx.request("users")
        names = sorted(clean(p.get("name")) + (" (you)" if p.get("self") is True else "")
                       for p in peers if isinstance(p, dict))
        self.show("\n".join(["online users:"] + names))

    def do_public(self, rest):
        room, _, text = rest.partition(" ")
        if not room or not text.strip():
            return self.show("usage: " + USAGE["public"])
        self.ctx.request("public", room=room, text=text.strip())

    def do_private(self, rest):
        to, _, text = rest.partition(" ")
        if not to or not text.strip():
            return self.show("usage: " + USAGE["private"])
        result = self.ctx.request("private", to=to, text=text.strip(), wait=2.0)
        if result.get("status") != "delivered":
            self.show("(%s is not reachable now: the message is queued and will be delivered)" % clean(to))

    def relay(self):
        while True:
            event = self.next_event()
            if event is None:
                return
            text = event_text(event)
            if text is not None:
                self.show(text)


def in_shell(text):
    """A hint as the shell says it: its own commands (``join G1``), not the command line's (``p2pctl join G1``)."""
    return re.sub(r"\bp2pctl (?=(create|join|leave|groups|users|public|private)\b)", "", text)


@command("shell", "an interactive chatroom session (create, join, leave, groups, users, public, private, exit)",
         description="A chatroom session on top of your daemon: type create, join, leave, groups, users, public "
                     "ROOM TEXT, private USER TEXT or exit; what happens (messages, people joining) appears as you "
                     "type. With stdin not a terminal, each line is a command.")
def shell(ctx, args):
    return Shell(ctx).run()
