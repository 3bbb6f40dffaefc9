"""File transfers between peers: offers and consent on the TLS link, bytes on a data path of their own.

Push (``p2pctl send bob FILE``):

1. The sender walks what it was given (a directory is sent with its tree; hidden and unsafe names, links and
   special files inside it are skipped and counted), hashes every file (:mod:`p2pd.core.filehash`, cached by
   inode and mtime so a re-run does not hash again), and sends ``offer`` on the link.
2. The receiver checks every name (:mod:`p2pd.core.filenames`; one bad name refuses the whole offer with a
   ``bad_name`` error), then applies its policy: ``ask`` holds the offer until ``p2pctl accept``/``reject``,
   ``auto`` accepts (optionally only from some peers and up to a size), ``deny`` refuses. Before it accepts it
   reserves the disk space the offer needs (free space minus what other running transfers will still write).
   ``accept`` carries a fresh secret and, per file, how many bytes the receiver has already verified.
3. The data path comes from an injected ``IDataPaths``. Over TCP (:mod:`p2pd.peer.net.tcp_paths`) the side
   that dialled the link dials the data connection (it knows that direction works through any NAT); it is the
   same TCP port as the link, told apart by its first bytes (:mod:`p2pd.peer.net.demux`). The sender streams
   each file from the verified offset as AES-GCM records (:mod:`p2pd.core.datastream`), driven by a push
   producer, so memory stays flat whatever the size: a chunk is read only when the path has taken the last
   one.
4. The receiver writes into ``INBOX/.p2pd-partial/KEY.N.part`` (opened relative to a directory descriptor,
   ``O_NOFOLLOW``, created ``O_EXCL``), verifies each 4 MiB chunk as it completes, journals the verified
   length, and when a file is whole and verified links it into the inbox under a name that exists nowhere
   yet (``name (1).ext``): ``link()`` never replaces a file, and no path component is ever followed through a
   symbolic link. A sender that sends more than it declared, or bytes that do not match the hash, has the
   transfer aborted and the partial file removed.

Resume: if either daemon dies or the connection drops, running the same ``send`` (or ``get``) again makes an
offer with the same content; the receiver finds its unfinished transfer of it and answers with the verified
lengths, so only the rest travels, and is still verified chunk by chunk.

Pull (``p2pctl get bob NAME``): the asking peer sends ``get``; the owner resolves the name inside its
``--share`` folder only (every component checked, no symbolic link followed), and answers with an ``offer``
carrying the request's id, which the asking peer accepts by itself. ``ls`` lists a share folder.

The parts: :mod:`.offers` (what a sender offers, what a receiver checks), :mod:`.states` (the lifecycle of a
transfer), :mod:`.engine` (the rules of the data stream, sans-IO), :mod:`.inbox` and :mod:`.share` (safe
file-system code), :mod:`.diskwriter`, :mod:`.sessions` (one data session of each direction, over an
:class:`~p2pd.peer.interfaces.IByteStream`), :mod:`.transfer` (a transfer's record and outcome) and
:mod:`.manager` (the facade the daemon and the control socket use); :mod:`.previews` the images among the
files: their facts and previews in the offer, checked by the receiver, and each checked once it has landed.
Nothing here imports :mod:`p2pd.peer.net`.
"""
