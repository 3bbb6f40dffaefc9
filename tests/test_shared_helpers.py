"""The one-place helpers both roles share: the data-dir lock, the millisecond clock, the size formatter."""

import os

import pytest
from twisted.internet.task import Clock

from p2pd.core.clock import now_ms
from p2pd.core.sizes import human_size
from p2pd.datadir import DataDirLock
from p2pd.errors import DataDirInUse


def test_a_second_lock_on_a_data_dir_is_refused_naming_the_holder(tmp_path):
    """The second taker gets DataDirInUse with the dir, the role and the first taker's pid; release frees it."""
    first = DataDirLock(str(tmp_path), "peer.lock", "p2pd daemon")
    first.acquire()
    second = DataDirLock(str(tmp_path), "peer.lock", "p2pd daemon")
    with pytest.raises(DataDirInUse) as info:
        second.acquire()
    assert str(info.value) == "data dir %s is in use by another p2pd daemon (pid %d)" % (tmp_path, os.getpid())
    first.release()
    second.acquire()
    assert (tmp_path / "peer.lock").read_text() == "%d\n" % os.getpid()
    second.release()


def test_the_lock_file_is_private_and_not_inherited(tmp_path):
    lock = DataDirLock(str(tmp_path), "registry.lock", "registry")
    lock.acquire()
    try:
        assert os.stat(tmp_path / "registry.lock").st_mode & 0o777 == 0o600
        assert not os.get_inheritable(lock.fd)
    finally:
        lock.release()


def test_now_ms_reads_the_injected_clock():
    clock = Clock()
    clock.advance(12.3456)
    assert now_ms(clock) == 12345


@pytest.mark.parametrize("n, text", [(0, "0 B"), (None, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"),
                                     (1536, "1.5 KiB"), (5 << 20, "5.0 MiB"), (3 << 40, "3.0 TiB"),
                                     (5 << 50, "5120.0 TiB")])
def test_human_size(n, text):
    assert human_size(n) == text


def test_tcp_listeners_get_a_deep_backlog_unless_one_is_given():
    from p2pd.listening import BACKLOG, with_backlog
    assert with_backlog("tcp:0:interface=127.0.0.1") == "tcp:0:interface=127.0.0.1:backlog=%d" % BACKLOG
    assert with_backlog("tcp6:port=0") == "tcp6:port=0:backlog=%d" % BACKLOG
    assert with_backlog("tcp:0:backlog=7") == "tcp:0:backlog=7"
    assert with_backlog("unix:/tmp/x.sock:mode=600") == "unix:/tmp/x.sock:mode=600"


def test_the_peer_raises_its_descriptor_limit_to_the_hard_one(monkeypatch):
    import resource

    from p2pd.peer import service
    calls = []
    monkeypatch.setattr(resource, "getrlimit", lambda which: (1024, 4096))
    monkeypatch.setattr(resource, "setrlimit", lambda which, values: calls.append(values))
    assert service.raise_fd_limit() == 4096 and calls == [(4096, 4096)]
    monkeypatch.setattr(resource, "getrlimit", lambda which: (1024, resource.RLIM_INFINITY))
    assert service.raise_fd_limit(most=50000) == 50000
    monkeypatch.setattr(resource, "getrlimit", lambda which: (8192, 8192))
    calls.clear()
    assert service.raise_fd_limit() == 8192 and calls == []
