"""Model check of the registry (RELIABILITY row 9): random claims, heartbeats, clock steps, lookups and releases
through the API (StubTreq, in-memory store, Clock) agree with a plain dict model at every step."""

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from p2pd import errors
from p2pd.core import signing
from p2pd.peer.registry_client import RegistryClient
from p2pd.registry.api import RegistryAPI
from p2pd.registry.store import MemoryStore

TTL = 30
NAMES = ["alice", "bob", "carol"]
KEYS = [signing.Identity.generate() for _ in range(4)]


def result_of(d):
    """The result of an already-fired Deferred (everything here is synchronous), or the Failure's exception."""
    out = []
    d.addBoth(out.append)
    assert out, "the Deferred did not fire synchronously"
    if isinstance(out[0], Failure):
        return out[0].value
    return out[0]


class RegistryModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.http = StubTreq(RegistryAPI(MemoryStore(), self.clock, lease_ttl=TTL, read_rate=0,
                                         write_rate=0).resource())
        self.owner = {}  # name -> key index
        self.lease = {}  # name -> expiry (seconds)

    def client(self, name, key):
        return RegistryClient("http://r", self.clock, self.http, KEYS[key], name)

    @rule(name=st.sampled_from(NAMES), key=st.integers(0, 3))
    def claim(self, name, key):
        reply = result_of(self.client(name, key).register(tcp=["127.0.0.1:1000"]))
        if name in self.owner and self.owner[name] != key:
            assert isinstance(reply, errors.Conflict)
            return
        assert isinstance(reply, dict), reply
        self.owner[name] = key
        self.lease[name] = self.clock.seconds() + TTL

    @rule(name=st.sampled_from(NAMES), key=st.integers(0, 3))
    def heartbeat(self, name, key):
        reply = result_of(self.client(name, key).heartbeat())
        if self.owner.get(name) == key:
            assert isinstance(reply, dict), reply
            self.lease[name] = self.clock.seconds() + TTL
        else:
            assert isinstance(reply, errors.Unauthorized)

    @rule(name=st.sampled_from(NAMES), key=st.integers(0, 3))
    def release(self, name, key):
        reply = result_of(self.client(name, key).release())
        if self.owner.get(name) == key:
            assert isinstance(reply, dict), reply
            del self.owner[name], self.lease[name]
        else:
            assert isinstance(reply, errors.Unauthorized)

    @rule(seconds=st.sampled_from([0.001, 1, 10, TTL - 1, TTL, TTL + 1]))
    def advance(self, seconds):
        self.clock.advance(seconds)

    @rule(name=st.sampled_from(NAMES))
    def lookup(self, name):
        now = self.clock.seconds()
        reply = result_of(self.client("watcher", 0).lookup(name))
        if name not in self.owner:
            assert isinstance(reply, errors.NotFound)
            return
        assert reply["key"] == KEYS[self.owner[name]].public_text
        assert reply["online"] == (self.lease[name] > now + 1e-9) or abs(self.lease[name] - now) < 0.002

    @rule()
    def online_list_agrees(self):
        now = self.clock.seconds()
        listed = [p["name"] for p in result_of(self.client("watcher", 0).peers(limit=200))["peers"]]
        expected = sorted(n for n, exp in self.lease.items() if exp > now + 0.002)
        maybe = sorted(n for n, exp in self.lease.items() if abs(exp - now) <= 0.002)
        assert set(expected) <= set(listed) <= set(expected) | set(maybe)


RegistryModel.TestCase.settings = settings(max_examples=500, stateful_step_count=50, deadline=None)
test_registry_model = RegistryModel.TestCase
