"""The paths that carry a peer's bytes: the TCP port (TLS links and file data connections, told apart by their
first bytes) and the one UDP socket (STUN now); later the UDP stream and relays, each one more provider of the
same interfaces."""
