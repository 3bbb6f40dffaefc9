"""One commit per reactor turn (p2pd.peer.chat.commits): acks and after-commit actions wait for it; the WAL
checkpoints run through the injected threads."""

from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from p2pd.peer.chat.commits import CHECKPOINT_EVERY, Checkpoints, Commits
from p2pd.peer.interfaces import ICommits
from p2pd.peer.threads import InlineThreads
from tests.chat_fakes import FakeLink


class CountingStore:
    def __init__(self, fail_checkpoints=0):
        self.commits = self.checkpoints = 0
        self.fail_checkpoints = fail_checkpoints
        self.log = []

    def commit(self):
        self.commits += 1
        self.log.append("commit")

    def checkpoint(self):
        self.checkpoints += 1
        if self.checkpoints <= self.fail_checkpoints:
            raise OSError("disk trouble")


def test_many_writes_in_one_turn_make_one_commit_then_the_acks_and_actions_in_order():
    store, clock = CountingStore(), Clock()
    commits = Commits(store, clock)
    assert verifyObject(ICommits, commits)
    link = FakeLink("bob")
    for i in range(3):
        commits.acknowledge(link, "id%d" % i)
        commits.after_commit(lambda i=i: store.log.append("action%d" % i))
        commits.schedule_flush()
    assert store.commits == 0 and link.sent == [] and len(clock.getDelayedCalls()) == 1
    clock.advance(0)
    assert store.log == ["commit", "action0", "action1", "action2"]
    assert link.sent == [{"t": "ack", "ids": ["id0", "id1", "id2"]}]
    clock.advance(0)
    assert store.commits == 1  # nothing new: no second commit


def test_an_action_that_raises_does_not_stop_the_others():
    store, clock = CountingStore(), Clock()
    commits = Commits(store, clock)
    commits.after_commit(lambda: 1 / 0)
    commits.after_commit(lambda: store.log.append("after"))
    commits.flush()
    assert store.log == ["commit", "after"]


def test_flush_now_cancels_the_scheduled_one():
    store, clock = CountingStore(), Clock()
    commits = Commits(store, clock)
    commits.schedule_flush()
    commits.flush()
    assert clock.getDelayedCalls() == []
    assert store.commits == 1


def test_checkpoints_run_every_period_survive_a_failure_and_stop():
    store, clock = CountingStore(fail_checkpoints=1), Clock()
    checkpoints = Checkpoints(store, clock, InlineThreads())
    checkpoints.start()
    for _ in range(3):
        clock.advance(CHECKPOINT_EVERY)
    assert store.checkpoints == 3
    checkpoints.stop()
    clock.advance(CHECKPOINT_EVERY * 5)
    assert store.checkpoints == 3 and clock.getDelayedCalls() == []


def test_shared_calls_of_one_key_get_the_outcome_of_the_one_that_runs():
    from twisted.internet import defer

    from p2pd.peer.chat.shared import Shared
    shared, runs = Shared(), []

    def start():
        runs.append(defer.Deferred())
        return runs[-1]

    a, b = shared("k", start), shared("k", start)
    c = shared("other", start)
    assert len(runs) == 2 and "k" in shared
    runs[0].callback("done")
    got = []
    for d in (a, b):
        d.addCallback(got.append)
    assert got == ["done", "done"] and "k" not in shared and not c.called
    failed = []
    runs[1].errback(ValueError("no"))
    c.addErrback(failed.append)
    assert failed[0].check(ValueError)
