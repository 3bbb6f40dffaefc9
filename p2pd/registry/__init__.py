"""The registry: HTTP API on Klein, state in Redis, embedded Redis supervisor, STUN responder."""
