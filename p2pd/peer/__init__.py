"""The peer daemon: registry client, peer links, control socket, storage."""
