"""Time as p2pd stores it: integer milliseconds read from an injected clock (anything with ``seconds()``, such
as the reactor or a ``task.Clock``), never from ``time.time()``."""


def now_ms(clock) -> int:
    """*clock*'s current time in whole milliseconds since the epoch."""
    return int(clock.seconds() * 1000)
