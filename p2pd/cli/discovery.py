"""Which daemon ``p2pctl`` talks to.

``--data-dir`` wins, then ``--name`` (``$XDG_DATA_HOME`` or ``~/.local/share``, then ``p2pd/NAME``), then
``$P2PD_DATA_DIR``, then ``$P2PD_NAME``; with none of them, every ``p2pd/*/control.sock`` that accepts a
connection is a candidate and exactly one must exist. The daemons ``./dev up`` runs live in the checkout's
``var/`` (or ``$P2PD_DEVNET_DIR``): run inside the checkout, p2pctl looks there too, by name and when searching."""

import glob
import os
import socket
from dataclasses import dataclass

from p2pd.cli import exits
from p2pd.cli.client import start_hint
from p2pd.cli.sanitize import clean
from p2pd.core.names import canonical_name
from p2pd.errors import InvalidName

SOCKET_NAME = "control.sock"


@dataclass
class Target:
    path: str  # the control socket
    label: str  # how to call it in messages: the daemon's name or its data dir
    explicit: bool  # chosen by an option or the environment rather than found
    name: str = None  # the peer name, when the target was chosen by name


def base_dir(env) -> str:
    root = env.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(root, "p2pd")


def places(env) -> list:
    """The directories whose ``NAME/control.sock`` are daemons: the base directory, then the ``./dev up``
    network's (``$P2PD_DEVNET_DIR``, or ``var/`` of the directory p2pctl runs in, if there is one)."""
    found = [base_dir(env)]
    devnet = env.get("P2PD_DEVNET_DIR") or os.path.join(os.getcwd(), "var")
    if os.path.isdir(devnet) and os.path.abspath(devnet) not in found:
        found.append(os.path.abspath(devnet))
    return found


def by_name(name, env) -> Target:
    try:
        name = canonical_name(name)
    except InvalidName as e:
        raise exits.CliError(clean(e.message), exits.USAGE) from None
    paths = [os.path.join(place, name, SOCKET_NAME) for place in places(env)]
    live = next((path for path in paths if is_live(path)), paths[0])
    return Target(live, name, True, name)


def by_data_dir(data_dir) -> Target:
    data_dir = os.path.abspath(os.path.expanduser(data_dir))
    return Target(os.path.join(data_dir, SOCKET_NAME), data_dir, True)


def is_live(path, timeout=1.0) -> bool:
    """Whether something accepts connections on the unix socket *path* (a stale file does not)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except socket.timeout:
        return True  # it exists and is busy
    except OSError:
        return False
    finally:
        sock.close()
    return True


def running(env) -> list:
    """Targets of every daemon that answers under the base directory, by name."""
    found = []
    for place in places(env):
        for path in sorted(glob.glob(os.path.join(glob.escape(place), "*", SOCKET_NAME))):
            if is_live(path):
                name = os.path.basename(os.path.dirname(path))
                found.append(Target(path, name, False, name))
    return found


def locate(data_dir=None, name=None, env=None) -> Target:
    env = os.environ if env is None else env
    if data_dir:
        return by_data_dir(data_dir)
    if name:
        return by_name(name, env)
    if env.get("P2PD_DATA_DIR"):
        return by_data_dir(env["P2PD_DATA_DIR"])
    if env.get("P2PD_NAME"):
        return by_name(env["P2PD_NAME"], env)
    found = running(env)
    if len(found) == 1:
        return found[0]
    if not found:
        raise exits.NoDaemon("no p2pd daemon is running (looked in %s; --data-dir DIR names another)"
                             % " and ".join(clean(p) for p in places(env)), hint=start_hint())
    names = ", ".join(clean(t.label) for t in found)
    raise exits.CliError("several p2pd daemons are running (%s): choose one with --name NAME" % names, exits.USAGE,
                         "several_daemons", "or set P2PD_NAME")
