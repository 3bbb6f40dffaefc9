import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture
def netns():
    """A tests.netns.Topology removed after the test, whatever happens; the test is skipped (saying why) where
    namespaces cannot be made: not root, or no usable ``ip netns``."""
    from tests.netns import Topology, unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with Topology() as topology:
        yield topology
