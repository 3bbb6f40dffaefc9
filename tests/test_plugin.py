"""The twistd plugin is discoverable and its options validate."""

import subprocess
import sys
import os

import pytest
from twisted.plugin import IPlugin, getPlugins
from twisted.application.service import IServiceMaker

from p2pd import tap

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def test_plugin_is_discoverable():
    """twisted.plugin finds a service maker named p2pd that points at p2pd.tap."""
    makers = {m.tapname: m for m in getPlugins(IServiceMaker) if IPlugin.providedBy(m)}
    assert "p2pd" in makers
    assert makers["p2pd"].module == "p2pd.tap"
    assert makers["p2pd"].options is tap.Options


def test_twistd_help_lists_p2pd():
    """`twistd --help` lists the p2pd plugin."""
    out = subprocess.run([TWISTD, "--help"], capture_output=True, text=True, timeout=60).stdout
    assert "p2pd" in out


@pytest.mark.parametrize("argv, message", [
    ([], "--role must be one of"),
    (["--role=bogus"], "--role must be one of"),
    (["--role=registry", "--stun", "x"], "--stun"),
    (["--role=registry", "--lease-ttl", "1"], "--lease-ttl"),
    (["--role=registry", "--rate-limit", "-1"], "--rate-limit"),
    (["--role=registry", "--redis", "mysql://x"], "Redis URL"),
    (["--role=peer"], "--name is required"),
    (["--role=peer", "--name", "аlice"], "--name"),
    (["--role=peer", "--name", "alice", "--registry", "ftp://x"], "--registry"),
    (["--role=peer", "--name", "alice", "--udp", "70000"], "--udp"),
    (["--role=peer", "--name", "alice", "--accept", "maybe"], "--accept"),
    (["--role=peer", "--name", "alice", "--share", "/nonexistent/dir"], "--share"),
    (["--role=peer", "--name", "alice", "--listen", "bogus:1"], "--listen"),
])
def test_bad_options_are_one_line_errors(argv, message):
    """Each bad value ends option parsing with a message naming the option."""
    with pytest.raises(SystemExit) as info:
        tap.Options().parseOptions(argv)
    assert message in str(info.value)


def test_config_file_supplies_defaults(tmp_path):
    """Values come from the INI file unless the command line gives them."""
    conf = tmp_path / "r.ini"
    conf.write_text("[p2pd]\nrole = registry\n[registry]\nlease-ttl = 30\nhttp = tcp:9999\n")
    options = tap.Options()
    options.parseOptions(["--config", str(conf), "--http", "tcp:7777"])
    assert options["role"] == "registry" and options["lease-ttl"] == 30 and options["http"] == "tcp:7777"


def test_config_file_unknown_key_is_refused(tmp_path):
    """A misspelt key in the config file is an error, not silently ignored."""
    conf = tmp_path / "r.ini"
    conf.write_text("[p2pd]\nrole = registry\n[registry]\nlease_ttl = 30\n")
    with pytest.raises(SystemExit) as info:
        tap.Options().parseOptions(["--config", str(conf)])
    assert "lease_ttl" in str(info.value)


def test_example_peer_config_parses_with_the_file_options(tmp_path):
    """conf/peer.ini is valid, and the file options (accept policy, sizes, inbox) are checked and converted."""
    options = tap.Options()
    conf = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf", "peer.ini")
    options.parseOptions(["--config", conf, "--data-dir", str(tmp_path)])
    assert options["role"] == "peer" and options["accept"] == "auto"
    assert options["accept-from"] == ("bob", "carol") and options["accept-max"] == 2 << 30
    assert options["inbox"] == os.path.join(str(tmp_path), "inbox")


@pytest.mark.parametrize("args, message", [
    (["--accept-max", "lots"], "--accept-max must be a size"),
    (["--accept-from", "bob,b@d"], "--accept-from"),
    (["--accept", "maybe"], "--accept must be ask, auto or deny"),
    (["--limits", "unverified=0"], "at least 1"),
    (["--limits", "unverifed=5"], "unknown limit 'unverifed'; the limits are: bytes-per-second, connections-per-second"),
    (["--limits", "unverified=2.5"], "whole number"),
    (["--limits", "unverified=lots"], "not a number"),
])
def test_bad_file_options_are_refused(args, message, tmp_path):
    options = tap.Options()
    with pytest.raises(SystemExit) as e:
        options.parseOptions(["--role=peer", "--name", "alice", "--data-dir", str(tmp_path)] + args)
    assert message in str(e.value)


def test_limits_can_be_changed_on_the_command_line(tmp_path):
    from p2pd.peer.limits import Limits
    options = tap.Options()
    options.parseOptions(["--role=peer", "--name", "alice", "--data-dir", str(tmp_path)])
    assert options["limits"] == Limits()
    options = tap.Options()
    options.parseOptions(["--role=peer", "--name", "alice", "--data-dir", str(tmp_path),
                          "--limits", " Unverified = 1K , unverified-per-address=8"])
    assert options["limits"] == Limits(unverified=1024, unverified_per_address=8)
