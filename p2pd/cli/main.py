"""``p2pctl``: parse the command line, find the daemon, run one command from the table, exit with its code."""

import argparse
import importlib
import sys
import textwrap

from p2pd.cli import exits
from p2pd.cli.command import COMMANDS, Context
from p2pd.cli.sanitize import clean

# modules whose @command registrations make up p2pctl; later features append theirs
COMMAND_MODULES = ["p2pd.cli.basic", "p2pd.cli.chat", "p2pd.cli.files", "p2pd.cli.rooms", "p2pd.cli.safety",
                   "p2pd.cli.shell"]

DEFAULT_TIMEOUT = 30.0


def load_commands():
    for module in COMMAND_MODULES:
        importlib.import_module(module)
    return COMMANDS


# the exit codes a command may end with besides exits.COMMON_CODES (its --help lists those only)
COMMAND_CODES = {
    "msg": (exits.QUEUED, exits.UNKNOWN_PEER), "private": (exits.QUEUED, exits.UNKNOWN_PEER),
    "chat": (exits.QUEUED, exits.UNKNOWN_PEER), "whois": (exits.UNKNOWN_PEER,), "ls": (exits.UNKNOWN_PEER,),
    "send": (exits.UNKNOWN_PEER, exits.REFUSED, exits.NOINPUT), "get": (exits.UNKNOWN_PEER, exits.REFUSED),
    "accept": (exits.REFUSED,),
}


def positive(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a number: %r" % text) from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError("must be between 0 and 3600 seconds")
    return value


def global_options(parser, suppress):
    """The options valid before and after the subcommand (after it they default to "not given")."""
    default = (lambda value: argparse.SUPPRESS) if suppress else (lambda value: value)
    parser.add_argument("--name", "-n", metavar="NAME", default=default(None),
                        help="talk to the daemon of this peer name")
    parser.add_argument("--data-dir", "-d", metavar="DIR", default=default(None),
                        help="talk to the daemon using this data directory")
    parser.add_argument("--json", action="store_true", default=default(False),
                        help="print JSON for scripts (one object per line for watch and chat)")
    parser.add_argument("--timeout", type=positive, metavar="SECONDS", default=default(DEFAULT_TIMEOUT),
                        help="how long to wait for the daemon (default %g)" % DEFAULT_TIMEOUT)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="p2pctl", description="Talk to the local p2pd peer daemon: chat, files, rooms, peers, history, events.",
        epilog=exits.EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    global_options(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    global_options(common, suppress=True)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    subparsers.required = True
    for cmd in load_commands().values():
        sub = subparsers.add_parser(cmd.name, help=cmd.help, parents=[common],
                                    epilog=exits.epilog(COMMAND_CODES.get(cmd.name, ())),
                                    description=textwrap.fill(cmd.description or cmd.help, 100),
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        for names, options in cmd.args:
            sub.add_argument(*names, **options)
    return parser


def main(argv=None, env=None) -> int:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError):
            pass
    parser = build_parser()
    try:
        options = parser.parse_args(argv)
    except SystemExit as e:  # --help or a usage error, already printed
        return e.code if isinstance(e.code, int) else exits.USAGE
    ctx = Context(options, env=env)
    try:
        return COMMANDS[options.command].run(ctx, options)
    except exits.CliError as e:
        return ctx.report(e)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return exits.ERROR
    except Exception as e:  # a bug in p2pctl: say so briefly, never a traceback full of network strings
        ctx.warn("p2pctl: internal error: %s: %s" % (type(e).__name__, clean(str(e))))
        return exits.ERROR
    finally:
        ctx.close()


if __name__ == "__main__":
    sys.exit(main())
