"""``status``, ``peers``, ``whois``, ``msg``, ``history`` and ``watch``."""

import time

from p2pd.cli import exits, render
from p2pd.cli.command import arg, command
from p2pd.cli.sanitize import clean


def message_wait(ctx) -> float:
    """How long the daemon waits for an acknowledgement before answering "queued", within ``--timeout``."""
    return round(min(10.0, ctx.timeout / 3), 3)


def outcome(peer, result) -> tuple:
    """(exit code, line for people) of a ``msg`` result."""
    peer = clean(result.get("to") or peer)
    if result.get("status") == "delivered":
        return exits.OK, "delivered to %s" % peer
    if result.get("via") == "outbox" and result.get("reason") == "not acknowledged yet":
        return exits.QUEUED, ("%s has not acknowledged it yet: message queued, it will be delivered when %s "
                              "answers" % (peer, peer))
    return exits.QUEUED, "%s is offline: message queued, it will be delivered when %s is back" % (peer, peer)


def show(ctx, result, lines):
    """Print *result*: as JSON with --json, else as the lines *lines* renders for people."""
    if ctx.json:
        ctx.emit(result)
    else:
        for line in lines(result):
            ctx.say(line)
    return exits.OK


@command("status", "this daemon: own name, addresses, registry state, queued messages")
def status(ctx, args):
    result = ctx.request("status")
    return show(ctx, result, render.status_lines)


@command("peers", "the peers that are online")
def peers(ctx, args):
    result = ctx.request("peers")
    return show(ctx, result, render.peers_lines)


@command("whois", "a peer's registry record and whether it can be reached", [arg("peer", metavar="NAME")])
def whois(ctx, args):
    result = ctx.request("whois", name=args.peer)
    return show(ctx, result, render.whois_lines)


@command("msg", "send one message", [arg("peer", metavar="NAME"), arg("text", metavar="TEXT", nargs="+")],
         description="Send TEXT (the words are joined with spaces) to NAME and wait until it is delivered or "
                     "queued. Exit code 0: delivered; 3: NAME is offline and the message is queued.")
def msg(ctx, args):
    text = " ".join(args.text)
    result = ctx.request("msg", to=args.peer, text=text, wait=message_wait(ctx))
    code, line = outcome(args.peer, result)
    if ctx.json:
        ctx.emit(result)
    else:
        ctx.say(line)
    return code


@command("history", "the stored conversation (with one peer or room, or all)",
         [arg("peer", metavar="PEER", nargs="?"),
          arg("--limit", type=int, default=100, metavar="N", help="the newest N messages (default 100)")])
def history(ctx, args):
    if not 1 <= args.limit <= 10000:
        raise exits.CliError("--limit must be between 1 and 10000", exits.USAGE)
    request = {"limit": args.limit}
    if args.peer:
        request["conversation"] = args.peer
    result = ctx.request("history", **request)
    if ctx.json:
        ctx.emit(result)
    elif not result:
        ctx.say("no messages" + (" with %s" % clean(args.peer) if args.peer else ""))
    else:
        for message in result:
            ctx.say(render.message_line(message, date=True, recipient=not args.peer))
    return exits.OK


@command("watch", "print events as they happen: messages, deliveries, peers coming and going (Ctrl-C stops)")
def watch(ctx, args):
    ctx.request("watch")
    if not ctx.json:
        ctx.warn("watching %s; Ctrl-C to stop" % clean(ctx.target.label))
    try:
        while True:
            event = ctx.client.events.get()
            if event is None:
                raise ctx.client.closed
            if ctx.json:
                ctx.emit(event)
            else:
                ctx.say(render.event_line(event, time.time() * 1000))
    except KeyboardInterrupt:
        return exits.OK
