"""The command table of ``p2pctl`` and what a command gets to run with.

A command module registers its commands with :func:`command`::

    @command("ls", "list a peer's shared files", args=[arg("peer", metavar="NAME")])
    def ls(ctx, args):
        files = ctx.request("ls", peer=args.peer)
        ...
        return exits.OK

and is listed in :data:`p2pd.cli.main.COMMAND_MODULES`. ``ctx.request`` connects on first use and raises
:class:`~p2pd.cli.exits.CliError` subclasses, which ``main`` prints and turns into the exit code.
"""

import sys
import threading
from dataclasses import dataclass, field
from typing import Callable

from p2pd.cli import discovery, exits
from p2pd.cli.client import ControlClient
from p2pd.cli.sanitize import clean, json_line


@dataclass
class Command:
    name: str
    help: str
    run: Callable
    args: list = field(default_factory=list)  # (args, kwargs) for ArgumentParser.add_argument
    description: str = None


COMMANDS: dict = {}


def arg(*names, **options):
    return names, options


def command(name, help, args=(), description=None):
    """Register the decorated ``run(ctx, args) -> exit code`` as the subcommand *name*."""

    def register(run):
        COMMANDS[name] = Command(name, help, run, list(args), description)
        return run

    return register


class Context:
    """Options, output and the (lazily opened) daemon connection of one ``p2pctl`` run."""

    def __init__(self, options, stdin=None, stdout=None, stderr=None, env=None):
        self.options = options
        self.json = options.json
        self.timeout = options.timeout
        self.stdin = stdin if stdin is not None else sys.stdin
        self.stdout = stdout if stdout is not None else sys.stdout
        self.stderr = stderr if stderr is not None else sys.stderr
        self.env = env
        self.lock = threading.RLock()
        self._client = None
        self.target = None

    # the daemon

    @property
    def client(self) -> ControlClient:
        if self._client is None:
            self.target = discovery.locate(self.options.data_dir, self.options.name, self.env)
            client = ControlClient(self.target.path, self.timeout, self.target.label)
            try:
                client.connect()
            except exits.NoDaemon as e:
                if self.target.name:
                    e.hint = "start it with: twistd -n p2pd --role=peer --name=%s" % self.target.name
                else:
                    e.hint = "start it with: twistd -n p2pd --role=peer --name=NAME --data-dir=%s" \
                             % self.target.label
                raise
            self._client = client
        return self._client

    def request(self, cmd, timeout=None, **args):
        return self.client.request(cmd, timeout=timeout, **args)

    def close(self):
        if self._client is not None:
            self._client.close()

    # output

    def say(self, text=""):
        """One line for people on stdout (callers clean what came from the network)."""
        with self.lock:
            self.stdout.write(text + "\n")
            self.stdout.flush()

    def emit(self, obj):
        """One JSON document on stdout (``--json``)."""
        self.say(json_line(obj))

    def warn(self, text):
        with self.lock:
            self.stderr.write(text + "\n")
            self.stderr.flush()

    def report(self, error: exits.CliError):
        """Print *error* for people on stderr (and as JSON on stdout with ``--json``); return its exit code."""
        if self.json:
            body = {"ok": False, "error": error.code or "error", "message": error.message}
            if isinstance(error, exits.DaemonError):
                body.update({k: v for k, v in error.reply.items() if k not in body and k != "id"})
            self.emit(body)
        hint = error.hint if error.hint and error.hint not in error.message else None  # never said twice
        self.warn("p2pctl: " + clean(error.message) + ("" if not hint else "; " + clean(hint)))
        return error.exit_code
