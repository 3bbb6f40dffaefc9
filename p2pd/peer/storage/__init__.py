"""The peer daemon's embedded store: chat history, the outbox, sequence counters and a few settings.

One SQLite file, ``<data_dir>/p2pd.sqlite3`` (mode 0600; SQLite gives its ``-wal`` and ``-shm`` files the same
mode), used synchronously from the reactor thread through the stdlib :mod:`sqlite3`. Every call is a handful
of indexed statements, so none of them blocks the reactor for long.

Writes are grouped. Each write joins the transaction that is currently open (opening one if needed) and is
visible to later reads at once, but only :meth:`Storage.commit` makes it durable. The daemon commits once per
reactor turn and sends acknowledgements only after that commit, so an acknowledged message is always on disk
and a message lost in a crash was never acknowledged (its sender still has it in its outbox and sends it
again; :meth:`Storage.add_incoming` drops the copy if the first one did arrive). Grouping is what lets one
process store 10,000+ messages per second in each direction: a commit costs a few ``write()`` calls, however
many messages it holds.

Durability: WAL journal with ``synchronous=NORMAL``. A commit appends its pages to the WAL with ``write()`` and
does not wait for ``fsync``; the WAL is fsynced when it is checkpointed into the database. Hence:

- a crash or SIGKILL of the daemon loses nothing that was committed: the written pages belong to the kernel,
  and the next open replays the WAL. What was written but not committed (including pages SQLite spilled to
  the WAL mid-transaction) carries no commit mark and is ignored, so it is absent, never half there;
- a power loss or kernel crash can lose the last moments of commits (whatever the kernel had not yet written
  back), but the database stays consistent: WAL frames are checksummed and a torn tail is discarded.

That is the right trade here. Process death (bugs, OOM killer, ``kill -9``, upgrades) is by far the common
failure, and it costs nothing. ``synchronous=FULL`` would fsync at every commit, i.e. stall the reactor for
one disk flush (milliseconds on an SSD, tens of them on a VM or a spinning disk) on every turn, to protect
against a power cut losing the last second of chat. Switching is one pragma should a deployment want it.

Foreign keys are off (the outbox points at history by rowid and :mod:`~p2pd.peer.storage.outbox` keeps the two
in step inside one transaction). Statements are fixed strings, so :mod:`sqlite3` prepares each once and reuses
it from its statement cache.

The modules of the package. :class:`Storage` is the sum of the table parts (messages, outbox, settings,
transfers, hashes); each is a subclass of :class:`~p2pd.peer.storage.db.Database` that can open the file on
its own, and in a Storage they share one connection and one write group:

- :mod:`~p2pd.peer.storage.db`: the file, its pragmas, the write group, commit, checkpoint, close;
- :mod:`~p2pd.peer.storage.schema`: the versioned schema and its migrations;
- :mod:`~p2pd.peer.storage.messages`: history, incoming messages and their seq, the conversation summary
  (and the fields of a message);
- :mod:`~p2pd.peer.storage.outbox`: outgoing messages, their seq, the outbox, room posts, delivery marks;
- :mod:`~p2pd.peer.storage.settings`, :mod:`~p2pd.peer.storage.transfers`, :mod:`~p2pd.peer.storage.hashes`:
  settings, file transfer records, the hash cache of offered files;
- :mod:`~p2pd.peer.storage.quarantine`: mailbox items that cannot be delivered;
- :mod:`~p2pd.peer.storage.receipts`: the delivery receipts we owe, and our messages that wait in a mailbox;
- :mod:`~p2pd.peer.storage.previews`: the checked previews of incoming image offers (the newest 1000);
- :mod:`~p2pd.peer.storage.checks` and :mod:`~p2pd.peer.storage.errors`: what input is refused, and how.
"""

from zope.interface import implementer

from p2pd.peer.interfaces import IChatStore, IFileStore
from p2pd.peer.storage.db import DB_FILENAME, WAL_LIMIT, Database, db_path
from p2pd.peer.storage.errors import InvalidMessage, StorageError
from p2pd.peer.storage.hashes import HashCache
from p2pd.peer.storage.messages import MESSAGE_FIELDS
from p2pd.peer.storage.outbox import Outbox
from p2pd.peer.storage.previews import Previews
from p2pd.peer.storage.quarantine import Quarantine
from p2pd.peer.storage.receipts import Receipts
from p2pd.peer.storage.schema import MIGRATIONS, SCHEMA_VERSION, migrate
from p2pd.peer.storage.settings import Settings
from p2pd.peer.storage.transfers import TransferRecords

__all__ = [
    "DB_FILENAME", "MESSAGE_FIELDS", "MIGRATIONS", "SCHEMA_VERSION", "WAL_LIMIT", "Database", "InvalidMessage",
    "Storage", "StorageError", "db_path", "migrate",
]


@implementer(IChatStore, IFileStore)
class Storage(Outbox, Settings, TransferRecords, HashCache, Quarantine, Receipts, Previews):
    """The daemon's store. Writes join the open transaction; :meth:`commit` makes them durable.

    Chat, the outbox, pins and rooms use it as an :class:`~p2pd.peer.interfaces.IChatStore`, file transfers as
    an :class:`~p2pd.peer.interfaces.IFileStore`.
    """

    def __init__(self, path: str, name: str | None = None):
        """Open (creating with mode 0600) the database at *path* and bring its schema up to date.

        *name* is this peer's own name, recorded as the sender of outgoing messages.
        """
        self.name = name
        super().__init__(path)
