"""The paths that carry the peer's bytes: today the TCP port (TLS links and file data connections, told apart by
their first bytes); later the UDP stream and relays, each one more provider of the same interfaces."""
