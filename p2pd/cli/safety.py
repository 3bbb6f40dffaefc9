"""``block``, ``unblock``, ``blocked``: peers you will not hear from; ``quarantine``: what hostile or broken peers
sent that could not be delivered, and why."""

from p2pd.cli import exits, render
from p2pd.cli.command import arg, command
from p2pd.cli.sanitize import clean


@command("quarantine", "mailbox messages that could not be delivered (forged, unreadable, or from a changed key)",
         [arg("--limit", type=int, default=100, metavar="N", help="the newest N (default 100)")],
         description="Mailbox messages that can never be delivered are set aside here instead of blocking the "
                     "ones behind them: unreadable or forged ones, ones from a name nobody holds, and ones signed "
                     "by a key other than the one pinned for their sender (someone reinstalled, or an impostor).")
def quarantine(ctx, args):
    if not 1 <= args.limit <= 1000:
        raise exits.CliError("--limit must be between 1 and 1000", exits.USAGE)
    result = ctx.request("quarantine", limit=args.limit)
    if ctx.json:
        ctx.emit(result)
    elif not result:
        ctx.say("nothing quarantined")
    else:
        for item in result:
            ctx.say("[%s] from %s: %s (mailbox item %s)" % (render.clock(item.get("received_at"), date=True),
                                                            clean(item.get("from") or "?"),
                                                            clean(item.get("reason")), render.short_id(item.get("id"))))
    return exits.OK


@command("block", "refuse a peer: its links, messages, files and mailbox deposits", [arg("peer", metavar="NAME")],
         description="From now on NAME's links are refused (an open one is closed), its mailbox deposits are "
                     "dropped, you cannot write to it and your room posts skip it. p2pctl unblock NAME undoes it.")
def block(ctx, args):
    result = ctx.request("block", name=args.peer)
    if ctx.json:
        ctx.emit(result)
    else:
        ctx.say("blocked %s: its links, messages, files and mailbox deposits are refused (p2pctl unblock %s)"
                % (clean(result.get("name")), clean(result.get("name"))))
    return exits.OK


@command("unblock", "let a blocked peer through again", [arg("peer", metavar="NAME")])
def unblock(ctx, args):
    result = ctx.request("unblock", name=args.peer)
    if ctx.json:
        ctx.emit(result)
    elif result.get("was_blocked"):
        ctx.say("unblocked %s" % clean(result.get("name")))
    else:
        ctx.say("%s was not blocked" % clean(result.get("name")))
    return exits.OK


@command("blocked", "the peers you blocked")
def blocked(ctx, args):
    result = ctx.request("blocked")
    if ctx.json:
        ctx.emit(result)
    else:
        ctx.say("\n".join(clean(name) for name in result) if result else "nobody is blocked")
    return exits.OK
