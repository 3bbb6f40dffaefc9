"""``p2pctl``: the command-line client of a peer daemon's control socket.

It speaks the line-delimited JSON protocol of :mod:`p2pd.peer.control` with a plain blocking socket (a reader
thread where replies and events must interleave), prints for people or ``--json`` for scripts, and maps errors
to exit codes (:mod:`p2pd.cli.exits`). Commands live in a table (:mod:`p2pd.cli.command`); each command module
registers its own, and :data:`p2pd.cli.main.COMMAND_MODULES` lists the modules to load.
"""
