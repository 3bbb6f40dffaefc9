"""The lifecycle of a transfer (p2pd.peer.files.states): the transition table, read as a specification."""

import pytest

from p2pd.peer.files import states
from p2pd.peer.files.states import BadTransition, TransferState

ALLOWED = {
    ("offered", "accept"): "accepted",
    ("offered", "start"): "active",  # a sender: the receiver answered, the data path is up
    ("offered", "refuse"): "rejected",
    ("offered", "fail"): "failed",
    ("offered", "interrupt"): "interrupted",
    ("offered", "cancel"): "cancelled",
    ("accepted", "start"): "active",
    ("accepted", "fail"): "failed",
    ("accepted", "interrupt"): "interrupted",
    ("accepted", "cancel"): "cancelled",
    ("active", "complete"): "done",
    ("active", "fail"): "failed",
    ("active", "interrupt"): "interrupted",
    ("active", "cancel"): "cancelled",
}
EVENTS = ["accept", "start", "complete", "fail", "interrupt", "refuse", "cancel"]
STATES = ["offered", "accepted", "active", "done", "failed", "interrupted", "rejected", "cancelled"]


@pytest.mark.parametrize("state,event", sorted(ALLOWED))
def test_an_allowed_event_moves_to_its_state(state, event):
    machine = TransferState(state)
    assert machine.allows(event)
    assert machine.handle(event) == ALLOWED[state, event] == machine.state


@pytest.mark.parametrize("state,event", [(s, e) for s in STATES for e in EVENTS if (s, e) not in ALLOWED])
def test_any_other_event_is_an_error_and_changes_nothing(state, event):
    machine = TransferState(state)
    assert not machine.allows(event)
    with pytest.raises(BadTransition) as info:
        machine.handle(event)
    assert (info.value.state, info.value.event) == (state, event)
    assert machine.state == state


def test_the_table_names_every_state_and_only_final_states_have_no_way_out():
    assert set(states.TRANSITIONS) == set(STATES)
    assert {s for s, moves in states.TRANSITIONS.items() if not moves} == states.FINAL


@pytest.mark.parametrize("status", ["done", "failed", "interrupted", "rejected", "cancelled"])
def test_end_moves_to_the_final_status_it_is_told(status):
    machine = TransferState("active" if status != "rejected" else "offered")
    assert machine.end(status) == status and machine.final


def test_end_refuses_a_status_that_is_not_final():
    with pytest.raises(BadTransition):
        TransferState().end("active")


def test_a_transfer_starts_offered_and_an_unknown_state_is_refused():
    assert TransferState().state == "offered" and not TransferState().final
    with pytest.raises(ValueError):
        TransferState("replaced")


def test_a_receiver_walks_offered_accepted_active_done():
    machine = TransferState()
    assert [machine.handle(e) for e in ("accept", "start", "complete")] == ["accepted", "active", "done"]


def test_the_resumable_and_running_statuses():
    assert states.UNFINISHED == ("offered", "accepted", "active", "interrupted")
    assert set(states.RUNNING) == {"offered", "accepted", "active"}
