"""``p2pctl chat NAME``: two-way chat on a terminal, or a script of messages on any other stdin.

On a terminal, incoming messages and delivery notices appear above the line being typed: a reader thread saves
readline's buffer, clears the line (``\\r ESC[K``), prints, and redraws the prompt and the buffer. Ctrl-D or
``/quit`` ends it; a line starting with ``/`` is a command (``/help`` lists them), and ``//`` sends a line that
starts with ``/``.

With a pipe or file on stdin each line is one message, sent in order (the next one only once the daemon has
answered for the previous one, so they are stored in that order); it exits when the last one is acknowledged:
0 if all were delivered, 3 if some are only queued, the error's code otherwise.
"""

import _thread
import queue
import threading

from p2pd.cli import exits, render
from p2pd.cli.basic import message_wait, outcome
from p2pd.cli.command import arg, command
from p2pd.cli.sanitize import clean
from p2pd.core.names import canonical_name
from p2pd.errors import InvalidName

# errors after which the remaining lines would fail the same way
FATAL = ("unknown_peer", "invalid_name", "forbidden")
PROMPT = "you> "
HELP = ("/quit (or Ctrl-D) leaves; /help shows this; any other line is sent to %s; "
        "to send a line that starts with /, start it with // (//shrug sends /shrug)")


def check_peer(ctx, peer):
    """The registry's record of *peer*; an unknown name ends the chat before anything is sent (exit 4), and a
    registry that cannot answer leaves it to the messages (they are queued)."""
    try:
        return ctx.request("whois", name=peer)
    except exits.DaemonError as e:
        if e.code in FATAL:
            raise
        return None


def is_from(event, peer) -> bool:
    """Whether *event* is a one-to-one message that *peer* sent us."""
    if event.get("event") != "message" or not isinstance(event.get("message"), dict):
        return False
    msg = event["message"]
    return msg.get("direction") == "in" and msg.get("sender") == peer and not msg.get("room")


def short(text, n=40) -> str:
    text = clean(text)
    return text if len(text) <= n else text[:n - 1] + "\u2026"


@command("chat", "chat with a peer (interactive on a terminal; one message per line otherwise)",
         [arg("peer", metavar="NAME")],
         description="On a terminal: type a line and Enter to send it; messages from NAME appear as they come; "
                     "Ctrl-D or /quit leaves, /help lists the commands, and a line starting with // sends "
                     "the rest starting with /. Otherwise each line of stdin is a message: p2pctl chat bob < "
                     "lines.txt sends them in order and exits when all are acknowledged (0: all delivered, "
                     "3: some queued because bob is offline).")
def chat(ctx, args):
    try:
        peer = canonical_name(args.peer)
    except InvalidName as e:
        raise exits.CliError(clean(e.message), exits.USAGE, e.code) from None
    if ctx.stdin.isatty():
        return Interactive(ctx, peer).run()
    return scripted(ctx, peer)


def relay_incoming(ctx, peer):
    """Print *peer*'s messages until the connection ends."""
    while True:
        event = ctx.client.events.get()
        if event is None:
            return
        if is_from(event, peer):
            if ctx.json:
                ctx.emit(event)
            else:
                ctx.say(render.message_line(event["message"]))


def scripted(ctx, peer):
    try:  # a line that is not UTF-8 is refused on its own by the daemon instead of ending the run
        ctx.stdin.reconfigure(errors="surrogateescape")
    except (AttributeError, ValueError):
        pass
    check_peer(ctx, peer)
    ctx.request("watch")
    relay = threading.Thread(target=relay_incoming, args=(ctx, peer), name="p2pctl-chat-events", daemon=True)
    relay.start()
    first_error, queued = None, 0
    try:
        for number, line in enumerate(ctx.stdin, 1):
            text = line[:-1] if line.endswith("\n") else line
            text = text[:-1] if text.endswith("\r") else text
            if not text.strip():
                continue
            try:
                result = ctx.request("msg", to=peer, text=text, wait=message_wait(ctx),
                                     timeout=ctx.timeout + message_wait(ctx))
            except exits.DaemonError as e:
                first_error = first_error or e
                if ctx.json:
                    ctx.emit({"line": number, "text": text, "ok": False, "error": e.code, "message": e.message})
                ctx.warn("p2pctl: line %d not sent: %s" % (number, clean(e.message)))
                if e.code in FATAL:
                    break
                continue
            code, _ = outcome(peer, result)
            queued += code == exits.QUEUED
            if ctx.json:
                ctx.emit(dict(result, line=number, text=text))
            else:
                ctx.say("%s: %s" % ("delivered" if code == exits.OK else "queued", clean(text)))
    finally:
        ctx.close()
        relay.join(2)
    if first_error is not None:
        if first_error.hint and not ctx.json:
            ctx.warn("p2pctl: " + clean(first_error.hint))
        return first_error.exit_code
    if queued:
        if not ctx.json:
            ctx.say("%s is offline: %d message(s) queued, they will be delivered when %s is back"
                    % (clean(peer), queued, clean(peer)))
        return exits.QUEUED
    return exits.OK


class Interactive:
    def __init__(self, ctx, peer, prompt=PROMPT):
        self.ctx = ctx
        self.peer = peer
        self.prompt = prompt
        self.reading = False
        self.lost = False
        self.leaving = False
        self.outgoing = queue.Queue()
        self.waiting = {}  # id -> text of messages queued so far, to announce their delivery
        try:
            import readline
        except ImportError:  # pragma: no cover - no readline on this platform: lines are still kept whole
            readline = None
        self.readline = readline
        self.redraw = ctx.stdout.isatty()  # no cursor tricks when the output goes to a file or pipe

    def show(self, text):
        """Print *text* above the line being typed, then redraw the prompt and what was typed so far."""
        out = self.ctx.stdout
        with self.ctx.lock:
            if self.reading and self.redraw:
                typed = self.readline.get_line_buffer() if self.readline else ""
                out.write("\r\x1b[K" + text + "\n" + self.prompt + typed)
            else:
                out.write(text + "\n")
            out.flush()

    def run(self):
        ctx, peer = self.ctx, self.peer
        record = check_peer(ctx, peer)
        if record is None:
            state = "the registry cannot say; messages will be queued"
        else:
            reach = record.get("reachability") or {}
            state = "connected" if reach.get("link") == "connected" else "online" if record.get("online") \
                else "offline: messages will be queued"
        ctx.request("watch")
        self.show("chatting with %s (%s). Enter sends a line; /help lists the commands, /quit leaves."
                  % (clean(peer), state))
        events = threading.Thread(target=self.relay, name="p2pctl-chat-events", daemon=True)
        sender = threading.Thread(target=self.send_all, name="p2pctl-chat-send", daemon=True)
        events.start()
        sender.start()
        try:
            while True:
                try:
                    self.reading = True
                    line = input(self.prompt)
                except (EOFError, KeyboardInterrupt):
                    self.reading = False
                    ctx.stdout.write("\n")
                    break
                finally:
                    self.reading = False
                if self.command(line) == "quit":
                    break
            self.leaving = True
            self.outgoing.put(None)
            sender.join(ctx.timeout + message_wait(ctx))
        finally:
            self.close(events)
        return self.outcome()

    def command(self, line):
        """Handle one typed line: "quit" for /quit, else None (a message was queued, help shown, or nothing)."""
        if not line.strip():
            return None
        if line.startswith("//"):
            self.outgoing.put(line[1:])
        elif line.startswith("/"):
            word = line.split()[0].lower()
            if word == "/quit":
                return "quit"
            if word == "/help":
                self.show(HELP % clean(self.peer))
            else:
                self.show("(unknown command %s: /help lists the commands; //%s sends it as a message)"
                          % (clean(word), clean(line[1:])))
        else:
            self.outgoing.put(line)
        return None

    def close(self, events):
        """Leaving: close the daemon connection and let the event thread end."""
        self.leaving = True
        self.ctx.close()
        events.join(2)

    def outcome(self):
        if self.lost:
            raise exits.Unavailable("the daemon closed the connection", hint="is it still running? p2pctl status")
        return exits.OK

    def next_event(self):
        """The next event from the daemon; None when the connection has ended (said above the prompt, and the
        reading thread interrupted, if we were not leaving)."""
        event = self.ctx.client.events.get()
        if event is None and not self.leaving:
            self.lost = True
            self.show("(the daemon closed the connection)")
            _thread.interrupt_main()
        return event

    def send_all(self):
        ctx = self.ctx
        while True:
            text = self.outgoing.get()
            if text is None:
                return
            try:
                result = ctx.request("msg", to=self.peer, text=text, wait=message_wait(ctx),
                                     timeout=ctx.timeout + message_wait(ctx))
            except exits.DaemonError as e:
                self.show("(not sent: %s)" % clean(e.message))
                continue
            except exits.CliError as e:
                self.show("(not sent: %s)" % clean(e.message))
                return
            code, line = outcome(self.peer, result)
            if code == exits.QUEUED:
                self.waiting[result.get("id")] = text
            self.show("(%s)" % line)

    def relay(self):
        while True:
            event = self.next_event()
            if event is None:
                return
            kind = event.get("event")
            if is_from(event, self.peer):
                self.show(render.message_line(event["message"]))
            elif kind == "delivered" and event.get("id") in self.waiting:
                self.show("(delivered to %s: %s)" % (clean(self.peer), short(self.waiting.pop(event["id"]))))
            elif kind == "failed" and event.get("id") in self.waiting:
                self.show("(could not deliver %s: %s)" % (short(self.waiting.pop(event["id"])),
                                                          clean(event.get("reason"))))
            elif kind == "peer" and event.get("name") == self.peer:
                self.show("(%s is %s)" % (clean(self.peer), clean(event.get("state"))))
            elif kind == "transfer" and event.get("peer") == self.peer and render.file_line(event):
                self.show("(%s)" % render.file_line(event))
