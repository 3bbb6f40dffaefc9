"""One idle timer, for the adapters that drop a peer or a connection after a silence: :class:`Timer` replaces the
hand-written ``callLater``/``reset``/``cancel`` pairs (used by the file sessions, the port's demux and the peer
links' keepalive)."""


class Timer:
    """``action()`` once *seconds* pass without :meth:`arm` being called again; :meth:`cancel` stops it."""

    def __init__(self, clock, seconds, action):
        self.clock = clock
        self.seconds = seconds
        self.action = action
        self.call = None

    @property
    def active(self):
        return self.call is not None and self.call.active()

    def arm(self, seconds=None):
        """Start the timer, or start it again from now (to fire after *seconds*, this once, if given)."""
        delay = self.seconds if seconds is None else seconds
        if self.active:
            self.call.reset(delay)
        else:
            self.call = self.clock.callLater(delay, self._fire)

    def cancel(self):
        if self.active:
            self.call.cancel()
        self.call = None

    def _fire(self):
        self.call = None
        self.action()
