"""The paths that carry a peer's bytes: the TCP port (TLS links and data connections) and the one UDP socket."""
