"""Links to other peers: :mod:`.link` is the ``LineReceiver`` of one (TLS, then the line protocol)."""
