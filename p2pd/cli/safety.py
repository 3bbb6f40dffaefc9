"""``quarantine``: what hostile or broken peers sent that could not be delivered, and why."""

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
