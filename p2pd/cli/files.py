"""File commands: ``send``, ``get``, ``ls``, ``transfers``, ``accept``, ``reject``, ``cancel``, ``preview``.

``send`` and ``get`` wait for the outcome and show a progress bar (bytes, rate, time left) on a terminal;
``--quiet`` hides it, ``--json`` prints the outcome as one JSON object. Ctrl-C cancels the transfer (the
receiver keeps what it verified: the same command later resumes). Exit codes: 0 done, 4 unknown peer,
5 refused by the receiver, 66 a file is missing or unreadable, 75 interrupted or peer offline (try again:
it resumes), 1 anything else.
"""

import base64
import binascii
import os

from p2pd.cli import exits, render
from p2pd.cli.command import arg, command
from p2pd.core.sizes import human_size as human
from p2pd.cli.sanitize import clean
from p2pd.core.names import canonical_name
from p2pd.errors import InvalidName

# a transfer takes as long as it takes: the wait for its outcome has no timeout
NO_TIMEOUT = 10 ** 9


def peer_name(text):
    try:
        return canonical_name(text)
    except InvalidName as e:
        raise exits.CliError(clean(e.message), exits.USAGE, e.code) from None


class Progress:
    """What a send or get is doing, on stderr when it is a terminal and not --quiet/--json (nothing otherwise):
    ``hashing a.bin (1 of 3)``, then ``waiting for bob to accept ...``, then a tqdm bar of bytes whose rate is
    measured from the first byte (not from the offer)."""

    def __init__(self, ctx, label, quiet, peer=None):
        self.bar = None
        self.label = label
        self.peer = peer
        self.enabled = not quiet and not ctx.json and ctx.stderr.isatty()
        self.ctx = ctx
        self.phase = None

    def line(self, text):
        """Show *text* in place of the previous phase's line."""
        self.ctx.stderr.write("\r\x1b[K" + text[:200])
        self.ctx.stderr.flush()

    def update(self, p):
        if not self.enabled:
            return
        phase = p.get("phase")
        if phase == "hashing":
            self.line("hashing %s (%s of %s)" % (clean(p.get("name"))[-60:], p.get("file"), p.get("files")))
            return
        if phase == "waiting":
            if self.phase != "waiting":
                self.phase = "waiting"
                self.line("waiting for %s to accept %s (%s) ..." % (
                    clean(self.peer or p.get("peer")), self.label, human(p.get("bytes"))))
            return
        if p.get("status") not in ("active", None) and phase != "moving":
            return
        if self.bar is None:
            from tqdm import tqdm

            self.line("")
            try:  # a terminal that does not say its size (0 x 0, as a bare pty) would get no bar at all
                size = os.get_terminal_size(self.ctx.stderr.fileno())
                sized = size.columns > 0 and size.lines > 0
            except (AttributeError, OSError, ValueError):
                sized = False
            shape = {"dynamic_ncols": True} if sized else {"ncols": 80, "nrows": 24}
            self.bar = tqdm(total=p.get("bytes") or 0, initial=p.get("done") or 0, unit="B", unit_scale=True,
                            unit_divisor=1024, desc=self.label, file=self.ctx.stderr, leave=False, **shape)
        done = p.get("done") or 0
        if done > self.bar.n:
            self.bar.update(done - self.bar.n)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.enabled:
            self.line("")


def follow(ctx, cmd, label, quiet, **args):
    """Run a send/get request to its end, with a progress bar; returns the outcome."""
    progress = Progress(ctx, label, quiet, peer=args.get("to") or args.get("peer"))
    waiter = None
    try:
        waiter = ctx.client.send(cmd, on_progress=progress.update, **args)
        return ctx.client.wait(waiter, timeout=NO_TIMEOUT)
    except exits.DaemonError as e:
        if e.code == "peer_offline":
            e.exit_code = exits.TEMPFAIL
            e.hint = "files go only to peers that are online; try again when they are"
        elif e.code == "link_failed":  # registered as online, but not answering (crashed, or unreachable)
            e.exit_code = exits.TEMPFAIL
            e.hint = "try again later"
        raise
    except KeyboardInterrupt:
        ctx.close()  # closing the control connection cancels the transfer in the daemon
        raise exits.CliError("cancelled; run the same command again to resume", exits.TEMPFAIL, "cancelled") \
            from None
    finally:
        progress.close()


def rate_text(outcome):
    seconds = outcome.get("seconds") or 0
    sent = outcome.get("sent") or 0
    text = "%s in %.1f s" % (human(sent), seconds)
    if seconds > 0 and sent:
        text += " (%s/s)" % human(sent / seconds)
    if outcome.get("resumed_from"):
        text += ", resumed after %s already there" % human(outcome["resumed_from"])
    return text


def room_target(ctx, target):
    """The room *target* names (``#G1``; ``G1`` when no peer has that name but a room does), or None for a peer."""
    if target.startswith("#"):
        return target[1:]
    try:
        canonical_name(target)
    except InvalidName:
        return target
    try:
        ctx.request("whois", name=target)
        return None
    except exits.DaemonError as e:
        if e.code != "unknown_peer":
            return None
        rooms = {clean(r.get("name")).casefold() for r in ctx.request("groups") if isinstance(r, dict)}
        if target.casefold() in rooms:
            return target
        raise


def send_to_room(ctx, room, paths):
    """Offer *paths* to every other member of *room*, each with its own consent and policy, at the same time;
    one line per member. Exit 0 if every member took them, else the first refusal's or failure's code."""
    members = ctx.request("members", room=room)
    if not members:
        ctx.say("nobody else in %s to send to" % clean(room))
        return exits.OK
    ctx.say("offering to %d member(s) of %s: %s" % (len(members), clean(room), ", ".join(map(clean, members))))
    waiters = [(m, ctx.client.send("send", to=m, paths=paths)) for m in members]
    code = exits.OK
    for member, waiter in waiters:
        try:
            outcome = ctx.client.wait(waiter, timeout=NO_TIMEOUT)
        except exits.DaemonError as e:
            code = code or (exits.TEMPFAIL if e.code in ("peer_offline", "link_failed") else e.exit_code)
            if ctx.json:
                ctx.emit({"to": member, "ok": False, "error": e.code, "message": e.message})
            else:
                ctx.say("%s: not sent: %s" % (clean(member), clean(e.message)))
            continue
        if ctx.json:
            ctx.emit(dict(outcome, to=member, ok=True))
        else:
            ctx.say("%s: sent, %s, verified" % (clean(member), rate_text(outcome)))
    return code


TRANSPORT_ARGS = [
    arg("--udp", dest="transport", action="store_const", const="udp",
        help="carry the bytes over the UDP stream (the default for images: PNG, JPEG, GIF, WEBP)"),
    arg("--tcp", dest="transport", action="store_const", const="tcp",
        help="carry the bytes over a TCP connection (the default for other files)")]


def transport_args(args):
    return {"transport": args.transport} if args.transport else {}


def transport_text(outcome):
    return " over %s" % outcome["transport"].upper() if outcome.get("transport") else ""


@command("send", "send files or folders to a peer, or to every member of a room (each must accept them)",
         [arg("peer", metavar="NAME"), arg("paths", metavar="FILE", nargs="+"),
          arg("-q", "--quiet", action="store_true", help="no progress bar")] + TRANSPORT_ARGS,
         description="Offers the files (folders with their tree) to NAME, waits for its answer and sends them. "
                     "The receiver verifies every byte; if the transfer breaks, the same command resumes it. "
                     "NAME may be a room (#G1, or G1 when no peer is called that): each other member is offered "
                     "the files and decides for itself; one line per member.")
def send(ctx, args):
    paths = [os.path.abspath(p) for p in args.paths]
    for given, path in zip(args.paths, paths):
        if not os.path.exists(path):
            raise exits.CliError("no such file or directory: %s" % clean(given), exits.NOINPUT, "file_missing")
    room = room_target(ctx, args.peer)
    if room is not None:
        return send_to_room(ctx, room, paths)
    peer = peer_name(args.peer)
    label = os.path.basename(paths[0].rstrip("/")) + (" +%d" % (len(paths) - 1) if len(paths) > 1 else "")
    outcome = follow(ctx, "send", clean(label)[:30], args.quiet, to=peer, paths=paths, **transport_args(args))
    if ctx.json:
        ctx.emit(dict(outcome, ok=True))
    else:
        names = outcome.get("names") or []
        what = clean(names[0]) if len(names) == 1 else "%d files" % (outcome.get("files") or len(names))
        ctx.say("sent %s to %s%s: %s, verified by %s" % (what, peer, transport_text(outcome), rate_text(outcome),
                                                         peer))
        for local, offered in outcome.get("renamed") or []:
            ctx.warn("p2pctl: %s was sent as %s (hidden and unsafe names are not sent as they are)"
                     % (clean(local), clean(offered)))
        if outcome.get("skipped"):
            ctx.warn("p2pctl: skipped %d hidden, linked or special entries" % outcome["skipped"])
    return exits.OK


@command("get", "fetch a file or folder from a peer's shared folder",
         [arg("peer", metavar="NAME"), arg("path", metavar="PATH"),
          arg("-q", "--quiet", action="store_true", help="no progress bar")] + TRANSPORT_ARGS,
         description="Fetches PATH (as `p2pctl ls NAME` shows it) from NAME's --share folder into your inbox.")
def get(ctx, args):
    peer = peer_name(args.peer)
    outcome = follow(ctx, "get", clean(args.path)[-30:], args.quiet, peer=peer, name=args.path,
                     **transport_args(args))
    if ctx.json:
        ctx.emit(dict(outcome, ok=True))
    else:
        ctx.say("got %s from %s%s: %s, verified; saved as %s" % (clean(args.path), peer, transport_text(outcome),
                                                                 rate_text(outcome),
                                                                 render.saved_where(outcome) or "nothing"))
    return exits.OK


@command("ls", "list a peer's shared folder",
         [arg("peer", metavar="NAME"), arg("path", metavar="PATH", nargs="?", default="")])
def ls(ctx, args):
    listing = ctx.request("ls", peer=peer_name(args.peer), path=args.path)
    if ctx.json:
        ctx.emit(listing)
        return exits.OK
    for item in listing["items"]:
        if item.get("type") == "dir":
            ctx.say("%10s  %s/" % ("-", clean(item.get("name"))))
        else:
            ctx.say("%10s  %s" % (human(item.get("size")), clean(item.get("name"))))
    if not listing["items"]:
        ctx.say("(empty)")
    if listing.get("truncated"):
        ctx.warn("p2pctl: the listing was cut short")
    return exits.OK


STATUS_WORDS = {"offered": "waiting for an answer", "active": "running", "done": "done",
                "rejected": "refused", "failed": "failed", "interrupted": "interrupted (resumable)",
                "cancelled": "cancelled", "accepted": "accepted", "replaced": "resumed"}


@command("transfers", "list file transfers, running and finished (offers waiting for you included)",
         [arg("--limit", type=int, default=50, help="how many (newest first)")])
def transfers(ctx, args):
    items = ctx.request("transfers", limit=max(1, min(args.limit, 1000)))
    if ctx.json:
        ctx.emit(items)
        return exits.OK
    if not items:
        ctx.say("no transfers yet")
    for t in items:
        if t.get("status") == "replaced":
            continue
        arrow = "to" if t.get("direction") == "out" else "from"
        offered = t.get("status") == "offered" and t.get("direction") == "in"
        line = "%s  %s %s: %s  %s  %s/%s" % (t["tid"][:8], arrow, clean(t.get("peer")),
                                            render.offer_summary(t, types=offered),
                                            STATUS_WORDS.get(t.get("status"), clean(t.get("status"))),
                                            human(t.get("done")), human(t.get("bytes")))
        if t.get("rate"):
            line += "  %s/s" % human(t["rate"])
        if t.get("error"):
            line += "  (%s)" % clean((t["error"] or {}).get("message"))
        ctx.say(line)
        for about in render.image_lines(t):
            ctx.say("          " + about)
        if offered:
            ctx.say("          p2pctl accept %s   |   p2pctl reject %s" % (t["tid"][:8], t["tid"][:8]))
        elif t.get("status") == "done" and (where := render.saved_where(t)):
            ctx.say("          saved as %s" % where)
    return exits.OK


def full_tid(ctx, prefix):
    """A transfer id from its full form or a unique prefix of at least 4 characters (as ``transfers`` shows)."""
    prefix = prefix.strip().lower()
    if len(prefix) == 32:
        return prefix
    if len(prefix) < 4:
        raise exits.CliError("give the transfer id (at least its first 4 characters)", exits.USAGE, "bad_request")
    matches = {t["tid"] for t in ctx.request("transfers", limit=1000) if t["tid"].startswith(prefix)}
    if len(matches) != 1:
        raise exits.CliError("%s transfer matches %s" % ("no" if not matches else "more than one", clean(prefix)),
                             exits.USAGE, "bad_request")
    return matches.pop()


def _answer(cmd, verb):
    def run(ctx, args):
        result = ctx.request(cmd, tid=full_tid(ctx, args.tid))
        if ctx.json:
            ctx.emit(result)
        elif result.get("status") == "rejected" and cmd == "accept":
            raise exits.CliError("could not accept: %s" % clean(result.get("error")), exits.REFUSED, "no_space")
        else:
            ctx.say("%s %s" % (verb, result["tid"]))
        return exits.OK

    return run


def waiting_offers(ctx):
    """The offers waiting for our answer, oldest first."""
    offers = [t for t in ctx.request("transfers", limit=1000)
              if t.get("direction") == "in" and t.get("status") == "offered"]
    return sorted(offers, key=lambda t: t.get("created") or 0)


def next_offer(ctx):
    """The oldest offer waiting for an answer, or (saying so) the next one to come."""
    ctx.request("watch")
    offers = waiting_offers(ctx)
    if offers:
        return offers[0]
    ctx.warn("p2pctl: waiting for an offer (Ctrl-C to stop) ...")
    while True:
        event = ctx.client.events.get()
        if event is None:
            raise exits.Unavailable("the daemon closed the connection", hint="is it still running? p2pctl status")
        if event.get("event") == "transfer" and event.get("direction") == "in" and event.get("status") == "offered":
            return event


def accept(ctx, args):
    """``accept ID``; or, without one, the oldest waiting offer (or the next to come), asked on the terminal
    like ``wormhole receive``: ``Accept 3 files (12.4 MiB) from alice into ~/inbox? [y/N]``."""
    if args.tid:
        tid = full_tid(ctx, args.tid)
        offer = next((t for t in ctx.request("transfers", limit=1000) if t["tid"] == tid), {})
    else:
        if not args.yes and not ctx.stdin.isatty():
            raise exits.CliError("no terminal to ask on: give the offer's ID (p2pctl transfers lists them), or "
                                 "--yes to accept the oldest", exits.USAGE, "bad_request")
        offer = next_offer(ctx)
        tid = offer["tid"]
        ctx.say("%s offers %s" % (clean(offer.get("peer")), render.offer_summary(offer, types=True)))
        if not args.yes:
            ctx.stdout.write("Accept %s from %s into %s? [y/N] " % (
                render.offer_summary(dict(offer, names=[]) if (offer.get("files") or 0) > 1 else offer),
                clean(offer.get("peer")), clean(offer.get("inbox") or "the inbox")))
            ctx.stdout.flush()
            if ctx.stdin.readline().strip().lower() not in ("y", "yes"):
                ctx.request("reject", tid=tid)
                ctx.say("rejected %s: %s was told" % (tid[:8], clean(offer.get("peer"))))
                return exits.OK
    result = ctx.request("accept", tid=tid)
    if ctx.json:
        ctx.emit(result)
    elif result.get("status") == "rejected":
        raise exits.CliError("could not accept: %s" % clean(result.get("error")), exits.REFUSED, "no_space")
    else:
        ctx.say("accepted %s: %s from %s, saving into %s" % (
            tid[:8], render.offer_summary(offer) if offer else "the files", clean(offer.get("peer") or "the peer"),
            clean(offer.get("inbox") or "the inbox")))
    return exits.OK


command("accept", "accept files a peer offered: by ID, or the next offer, asked on the terminal",
        [arg("tid", metavar="ID", nargs="?", help="the offer (p2pctl transfers lists them); without it, the "
                                                   "oldest waiting offer or the next to come, and you are asked"),
         arg("-y", "--yes", action="store_true", help="without ID: accept without asking")])(accept)
command("reject", "refuse files a peer offered", [arg("tid", metavar="ID")])(_answer("reject", "rejected"))
command("cancel", "stop a running transfer (it can be resumed later)",
        [arg("tid", metavar="ID")])(_answer("cancel", "cancelled"))


@command("preview", "write the preview of an image offered to you to a file (a JPEG of at most 256 px)",
         [arg("tid", metavar="ID"),
          arg("--file", type=int, metavar="N", help="the Nth file of the transfer (default: the first with a preview)"),
          arg("-o", "--out", metavar="FILE", help="where to write it (default: preview-ID-N.jpg in the current "
                                                  "directory, which must not exist yet)")],
         description="Writes the preview that came with an offer of images (p2pctl transfers says which have one) "
                     "and prints where. The daemon kept it only after checking it: a JPEG of at most 256 x 256 "
                     "pixels that decodes.")
def preview(ctx, args):
    tid = full_tid(ctx, args.tid)
    if args.file is not None and args.file < 1:
        raise exits.CliError("--file counts the files of the transfer from 1", exits.USAGE, "bad_request")
    result = ctx.request("preview", tid=tid, **({} if args.file is None else {"index": args.file - 1}))
    try:
        data = base64.b64decode(result.get("jpeg") or "", validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise exits.CliError("the daemon sent a preview that is not base64") from None
    index = result.get("index") if isinstance(result.get("index"), int) else 0
    path = os.path.abspath(args.out or "preview-%s-%d.jpg" % (tid[:8], index + 1))
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_TRUNC if args.out else os.O_EXCL)
    try:
        with os.fdopen(os.open(path, flags, 0o644), "wb") as f:
            f.write(data)
    except FileExistsError:
        raise exits.CliError("%s exists already: name another file with --out FILE" % clean(path),
                             exits.ERROR, "file_exists") from None
    except OSError as e:
        raise exits.CliError("cannot write %s: %s" % (clean(path), e.strerror), exits.ERROR, "write_failed") \
            from None
    if ctx.json:
        ctx.emit({"tid": tid, "index": index, "name": result.get("name"), "path": path, "bytes": len(data)})
    else:
        facts = render.image_text(result.get("image"))
        ctx.say("wrote the preview of %s%s to %s (%s)" % (clean(result.get("name")), " (%s)" % facts if facts else "",
                                                          clean(path), human(len(data))))
    return exits.OK
