"""One-to-one chat and rooms, in parts joined by the interfaces of :mod:`p2pd.peer.interfaces`.

- :mod:`.events` the events the control socket's watchers get; :mod:`.commits` one commit per reactor turn,
  then the acks and events it allows, and the WAL checkpoints;
- :mod:`.pins` identities pinned on first contact; :mod:`.dialer` authenticated links, reused, with back-off;
- :mod:`.outbox` what we send: stored, queued in ``seq`` order, answered delivered or queued;
  :mod:`.mailbox` sealing into the registry mailbox and fetching from it;
- :mod:`.receive` what we get, in per-sender order; :mod:`.rooms` rooms; :mod:`.directory` who is out there.

:class:`p2pd.peer.daemon.PeerDaemon` builds them and is the facade the control socket and the links use.
"""
