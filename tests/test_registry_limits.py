"""The registry's limits against hostile peers (issue 12, items 7 and 8): the limits, their defaults and the
--limits option that changes them."""

import pytest

from p2pd import tap
from p2pd.core.limits import parse_limits
from p2pd.registry.limits import RegistryLimits


# -- the limits and their option -----------------------------------------------------------------------------------

def test_the_defaults():
    """The registry's defaults are the ones the README documents."""
    limits = RegistryLimits()
    assert (limits.names_per_key, limits.claims_per_address_per_hour, limits.probation) == (8, 30, 600)
    assert (limits.rooms_per_owner, limits.room_empty_expiry, limits.room_idle_expiry) == (20, 3600, 30 * 86400)
    assert (limits.redis_maxmemory, limits.mailbox_memory_share, limits.claims_memory_share) == (256 << 20, 0.75, 0.9)


def test_limits_come_from_the_command_line_or_the_config_file(tmp_path):
    """--limits NAME=VALUE,... changes the named limits (sizes with K/M/G); `limits =` in [registry] does too."""
    options = tap.Options()
    options.parseOptions(["--role=registry", "--data-dir", str(tmp_path), "--limits",
                          " Names-Per-Key = 2, redis-maxmemory=64M ,mailbox-memory-share=0.5"])
    assert options["limits"] == RegistryLimits(names_per_key=2, redis_maxmemory=64 << 20, mailbox_memory_share=0.5)
    conf = tmp_path / "r.ini"
    conf.write_text("[p2pd]\nrole = registry\n[registry]\nlimits = rooms-per-owner=3,probation=60\n")
    options = tap.Options()
    options.parseOptions(["--config", str(conf), "--data-dir", str(tmp_path)])
    assert options["limits"] == RegistryLimits(rooms_per_owner=3, probation=60.0)
    options = tap.Options()
    options.parseOptions(["--role=registry", "--data-dir", str(tmp_path)])
    assert options["limits"] == RegistryLimits()


@pytest.mark.parametrize("text, message", [
    ("names-per-kee=3", "unknown limit 'names-per-kee'; the limits are: claims-memory-share, claims-per-address-"),
    ("unverified=5", "unknown limit 'unverified'"),  # a peer's limit is not a registry's
    ("names-per-key=2.5", "limit names-per-key must be a whole number"),
    ("names-per-key=0", "limit names-per-key must be at least 1"),
    ("probation=soon", "not a number"),
    ("mailbox-memory-share=2", "limit mailbox-memory-share must be at most 1"),
    ("claims-memory-share=0", "limit claims-memory-share must be at least 0.05"),
    ("mailbox-memory-share=0.95", "must not be above claims-memory-share (0.9)"),
    ("redis-maxmemory=1M", "redis-maxmemory must be 0 (no maximum) or at least 4M"),
])
def test_bad_limits_are_one_line_errors(tmp_path, text, message):
    """A bad --limits ends option parsing with a message that says what is wrong (and which limits exist)."""
    with pytest.raises(SystemExit) as info:
        tap.Options().parseOptions(["--role=registry", "--data-dir", str(tmp_path), "--limits", text])
    assert "--limits: " in str(info.value) and message in str(info.value)


def test_one_parser_serves_both_roles():
    """The registry's parser reads the peer's limits exactly as the peer's own parser does, so the two can be one."""
    from p2pd.peer.limits import Limits
    from p2pd.peer.limits import parse_limits as peer_parse

    text = "unverified=1K, offer-expiry=90, bytes-per-second=2M"
    assert parse_limits(text, Limits) == peer_parse(text)
