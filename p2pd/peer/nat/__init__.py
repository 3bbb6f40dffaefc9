"""Reachability: how a peer learns the address and port the world sees it from (STUN, today; NAT-type
detection and hole punching build on the same UDP socket)."""
