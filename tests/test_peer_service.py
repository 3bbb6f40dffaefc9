"""The peer service's start-up order: building it touches nothing (twistd may fork after), starting it takes the
data-dir lock before any other file or database is opened."""

import os

import pytest
from twisted.internet.task import Clock

from p2pd import tap
from p2pd.datadir import DataDirLock
from p2pd.peer.service import PeerService


def peer_options(data_dir):
    options = tap.Options()
    options.parseOptions(["--role=peer", "--name=alice", "--data-dir", str(data_dir),
                          "--registry", "http://127.0.0.1:9", "--listen", "tcp:0:interface=127.0.0.1",
                          "--udp", "127.0.0.1:0"])
    return options


def test_building_the_service_touches_nothing(tmp_path):
    """makeService only remembers the options: no data dir, key, database or inbox exists afterwards."""
    data_dir = tmp_path / "alice"
    service = tap.makeService(peer_options(data_dir))
    assert isinstance(service, PeerService)
    assert not data_dir.exists()
    assert list(service) == []  # no listener yet either


def test_a_locked_data_dir_is_refused_before_anything_is_opened(tmp_path):
    """With another daemon's lock on the data dir, startService exits with "in use" and has created no
    identity, database or inbox there."""
    data_dir = tmp_path / "alice"
    data_dir.mkdir(mode=0o700)
    holder = DataDirLock(str(data_dir), "peer.lock", "p2pd daemon")
    holder.acquire()
    try:
        service = PeerService(peer_options(data_dir), Clock())
        with pytest.raises(SystemExit) as info:
            service.startService()
        assert "in use by another p2pd daemon (pid %d)" % os.getpid() in str(info.value)
        assert sorted(os.listdir(data_dir)) == ["peer.lock"]
        outcome = []
        service.stopService().addBoth(outcome.append)  # stopping a service that never got its parts: no error
        assert outcome == [None]
    finally:
        holder.release()
