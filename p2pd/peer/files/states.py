"""The lifecycle of one transfer, as one transition table (in the style of h11's): every status a transfer
takes goes through :meth:`TransferState.handle`, and an event its state does not allow raises
:class:`BadTransition` instead of silently writing a status.

States are the ``status`` stored with the transfer (and shown by ``p2pctl transfers``)::

    offered --accept--> accepted --start--> active --complete--> done
       |                   |                  |
       |  (a sender goes offered --start--> active once the receiver answered)
       +--refuse--> rejected                  |
       +--fail/interrupt/cancel (from offered, accepted or active) --> failed / interrupted / cancelled

``done``, ``failed``, ``interrupted``, ``rejected`` and ``cancelled`` are final: a transfer is resumed by a new
offer (a new :class:`TransferState` that starts at ``offered``), never by leaving a final state.
"""

OFFERED, ACCEPTED, ACTIVE = "offered", "accepted", "active"
DONE, FAILED, INTERRUPTED, REJECTED, CANCELLED = "done", "failed", "interrupted", "rejected", "cancelled"
FINAL = frozenset({DONE, FAILED, INTERRUPTED, REJECTED, CANCELLED})

ACCEPT, START, COMPLETE, FAIL, INTERRUPT, REFUSE, CANCEL = (
    "accept", "start", "complete", "fail", "interrupt", "refuse", "cancel")

_ENDINGS = {FAIL: FAILED, INTERRUPT: INTERRUPTED, CANCEL: CANCELLED}

TRANSITIONS = {
    OFFERED: {ACCEPT: ACCEPTED, START: ACTIVE, REFUSE: REJECTED, **_ENDINGS},
    ACCEPTED: {START: ACTIVE, **_ENDINGS},
    ACTIVE: {COMPLETE: DONE, **_ENDINGS},
    **{state: {} for state in FINAL},
}

# the event that ends a transfer with a given final status (Transfer.finish is told the status)
ENDING = {DONE: COMPLETE, FAILED: FAIL, INTERRUPTED: INTERRUPT, REJECTED: REFUSE, CANCELLED: CANCEL}

# statuses of an incoming offer that a new offer of the same files resumes
UNFINISHED = (OFFERED, ACCEPTED, ACTIVE, INTERRUPTED)
# statuses of a transfer that was running when the daemon stopped (rewritten to interrupted at start)
RUNNING = (ACTIVE, OFFERED, ACCEPTED)


class BadTransition(RuntimeError):
    """A transfer was asked to make a move its state does not allow (a bug, not a peer's fault)."""

    def __init__(self, state, event):
        super().__init__("a transfer that is %s cannot %s" % (state, event))
        self.state = state
        self.event = event


class TransferState:
    """The state of one transfer; :meth:`handle` moves it and returns the new state."""

    def __init__(self, state=OFFERED):
        if state not in TRANSITIONS:
            raise ValueError("no transfer state %r" % (state,))
        self.state = state

    @property
    def final(self):
        return self.state in FINAL

    def allows(self, event):
        return event in TRANSITIONS[self.state]

    def handle(self, event):
        try:
            self.state = TRANSITIONS[self.state][event]
        except KeyError:
            raise BadTransition(self.state, event) from None
        return self.state

    def end(self, status):
        """Move to the final *status* (done, failed, interrupted, rejected or cancelled)."""
        if status not in ENDING:
            raise BadTransition(self.state, status)
        return self.handle(ENDING[status])
