"""Safe landing (p2pd.peer.files.inbox) and the share (p2pd.peer.files.share): partial files, landing under
free names, no symbolic link followed."""

import os

import pytest

from tests.files_world import *  # noqa: F401,F403 (the fakes, helpers and fixtures of these tests)


# -- partial files ------------------------------------------------------------------------------------------------

def test_open_part_creates_a_private_file_that_claims_no_space_yet(world):
    """Issue 12, finding 3: the space of a partial file is claimed as its bytes come (the disk writer does it),
    not all at once when it is opened: an offer that sends a header and hangs up leaves nothing behind."""
    daemon, manager = world
    t, _, _ = offer(manager, [("a.bin", A)])
    fd, have = t.open_part(0)
    try:
        assert have == 0 and os.lseek(fd, 0, os.SEEK_CUR) == 0
        st = os.fstat(fd)
        assert st.st_size == 0 and stat.S_IMODE(st.st_mode) == 0o600
    finally:
        os.close(fd)
    part_dir = os.path.join(manager.inbox.path, PARTIAL_DIR)
    assert stat.S_IMODE(os.stat(part_dir).st_mode) == 0o700
    assert os.listdir(part_dir) == [t.part_name(0)] and t.part_name(0).endswith(".0.part")


def write_part(manager, t, data, index=0):
    part_dir = os.path.join(manager.inbox.path, PARTIAL_DIR)
    os.makedirs(part_dir, exist_ok=True)
    with open(os.path.join(part_dir, t.part_name(index)), "wb") as f:
        f.write(data)
    return os.path.join(part_dir, t.part_name(index))


def test_open_part_resumes_at_the_journaled_length(world, small_chunks):
    daemon, manager = world
    t, _, _ = offer(manager, [("a.bin", A)])
    path = write_part(manager, t, A[:300] + b"\0" * 700)
    t.have[0] = 256
    fd, have = t.open_part(0)
    try:
        assert have == 256 and os.lseek(fd, 0, os.SEEK_CUR) == 256
    finally:
        os.close(fd)
    with open(path, "rb") as f:
        assert f.read() == A[:256]  # cut back to what the journal says was verified


@pytest.mark.parametrize("length, journaled, expected", [
    (150, 256, 128),  # shorter than the journal: back to the last whole chunk in the file
    (63, 256, 0),
    (0, 64, 0),
    (400, 256, 256),  # shorter than the file but longer than the journal: the journal holds
    (1500, 256, 256),  # longer than the file: cut to its size
])
def test_open_part_of_a_short_part_falls_back_to_whole_chunks(world, small_chunks, length, journaled, expected):
    daemon, manager = world
    t, _, _ = offer(manager, [("a.bin", A)])
    content = (A * 2)[:length]
    path = write_part(manager, t, content)
    t.have[0] = journaled
    fd, have = t.open_part(0)
    try:
        assert have == expected and os.lseek(fd, 0, os.SEEK_CUR) == expected
    finally:
        os.close(fd)
    assert os.path.getsize(path) == expected  # cut back to where it resumes
    with open(path, "rb") as f:
        assert f.read() == content[:expected]


def test_open_part_without_a_part_starts_over(world, small_chunks):
    daemon, manager = world
    t, _, _ = offer(manager, [("a.bin", A)])
    t.have[0] = 256
    fd, have = t.open_part(0)
    os.close(fd)
    assert have == 0


def test_a_symlinked_partial_folder_is_refused(world, tmp_path):
    daemon, manager = world
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, os.path.join(manager.inbox.path, PARTIAL_DIR))
    t, _, _ = offer(manager, [("a.bin", A)])
    with pytest.raises(TransferError) as info:
        t.open_part(0)
    assert info.value.code == "write_failed"
    assert os.listdir(elsewhere) == []


def test_a_stream_into_a_symlinked_partial_folder_writes_nothing_through_it(world, tmp_path):
    daemon, manager = world
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, os.path.join(manager.inbox.path, PARTIAL_DIR))
    t, outcome, keys, conn, transport, sealer = receive_one(manager, A)
    try:
        deliver(conn, file_records(sealer, 0, A) + sealer.finish())
    except TransferError:
        pass  # see the next test
    assert os.listdir(elsewhere) == [] and inbox_files(manager) == []
    assert os.path.islink(os.path.join(manager.inbox.path, PARTIAL_DIR))


def test_a_stream_into_a_symlinked_partial_folder_fails_the_transfer(world, tmp_path):
    """A local failure to open the partial file (here: .p2pd-partial is a symlink) fails the transfer with
    write_failed, tells the sender, and does not raise out of dataReceived."""
    daemon, manager = world
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, os.path.join(manager.inbox.path, PARTIAL_DIR))
    t, outcome, keys, conn, transport, sealer = receive_one(manager, A)
    conn.dataReceived(file_records(sealer, 0, A) + sealer.finish())
    failed_with(outcome, "write_failed")
    assert replies(keys, transport)[-1]["code"] == "write_failed"
    assert manager.live == {} and t.record["status"] in ("failed", "interrupted")


@pytest.mark.parametrize("target", ["file", "dangling"])
def test_a_symlink_at_the_part_name_is_not_followed(world, tmp_path, target):
    daemon, manager = world
    t, _, _ = offer(manager, [("a.bin", A)])
    outside = tmp_path / "outside"
    if target == "file":
        outside.write_bytes(b"precious")
    part_dir = os.path.join(manager.inbox.path, PARTIAL_DIR)
    os.makedirs(part_dir)
    os.symlink(outside, os.path.join(part_dir, t.part_name(0)))
    with pytest.raises(OSError):
        os.close(t.open_part(0)[0])
    if target == "file":
        assert outside.read_bytes() == b"precious"
    else:
        assert not outside.exists()


def test_a_symlink_at_the_part_name_fails_the_transfer_cleanly(world, tmp_path):
    """An OSError while opening the partial file (a symlink at its name: ELOOP) fails the transfer with
    write_failed and tells the sender; it does not raise out of dataReceived, and nothing is written outside."""
    daemon, manager = world
    t, outcome, keys, conn, transport, sealer = receive_one(manager, A)
    part_dir = os.path.join(manager.inbox.path, PARTIAL_DIR)
    os.makedirs(part_dir)
    os.symlink(tmp_path / "outside", os.path.join(part_dir, t.part_name(0)))
    try:
        conn.dataReceived(file_records(sealer, 0, A) + sealer.finish())
    finally:
        assert not (tmp_path / "outside").exists()
    failed_with(outcome, "write_failed")
    assert replies(keys, transport)[-1]["code"] == "write_failed"
    assert manager.live == {}


def test_discard_part_removes_the_part_and_forgets_the_length(world):
    daemon, manager = world
    t, _, _ = offer(manager, [("a.bin", A)])
    write_part(manager, t, A)
    t.have[0] = 1000
    t.discard_part(0)
    assert t.have == [0] and partials(manager) == []
    t.discard_part(0)  # already gone: harmless


# -- landing ----------------------------------------------------------------------------------------------------

def make_part(manager, data=b"new", name="k.0.part"):
    part_dir = os.path.join(manager.inbox.path, PARTIAL_DIR)
    os.makedirs(part_dir, exist_ok=True)
    with open(os.path.join(part_dir, name), "wb") as f:
        f.write(data)
    return name


def test_land_never_replaces_an_existing_file(world):
    daemon, manager = world
    for name in ("x.txt", "x (1).txt"):
        with open(os.path.join(manager.inbox.path, name), "wb") as f:
            f.write(name.encode())
    assert manager.inbox.land(make_part(manager), "x.txt", {}) == "x (2).txt"
    assert read(os.path.join(manager.inbox.path, "x (2).txt")) == b"new"
    assert read(os.path.join(manager.inbox.path, "x.txt")) == b"x.txt"
    assert read(os.path.join(manager.inbox.path, "x (1).txt")) == b"x (1).txt"
    assert partials(manager) == []


def test_land_uses_the_chosen_top_and_creates_folders(world):
    daemon, manager = world
    assert manager.inbox.land(make_part(manager), "pics/2024/a.jpg", {"pics": "pics (3)"}) == "pics (3)/2024/a.jpg"
    assert read(os.path.join(manager.inbox.path, "pics (3)", "2024", "a.jpg")) == b"new"


@pytest.mark.parametrize("dangling", [False, True])
def test_land_does_not_follow_a_symlink_at_the_target_name(world, tmp_path, dangling):
    daemon, manager = world
    outside = tmp_path / "outside.txt"
    if not dangling:
        outside.write_bytes(b"precious")
    os.symlink(outside, os.path.join(manager.inbox.path, "x.txt"))
    assert manager.inbox.land(make_part(manager), "x.txt", {}) == "x (1).txt"
    assert read(os.path.join(manager.inbox.path, "x (1).txt")) == b"new"
    assert os.path.islink(os.path.join(manager.inbox.path, "x.txt"))
    if dangling:
        assert not outside.exists()
    else:
        assert outside.read_bytes() == b"precious"


@pytest.mark.parametrize("landing, link_at", [("top/a.txt", "top"), ("top/sub/a.txt", "top/sub")])
def test_land_does_not_write_through_a_symlinked_folder(world, tmp_path, landing, link_at):
    daemon, manager = world
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.makedirs(os.path.join(manager.inbox.path, os.path.dirname(link_at)), exist_ok=True)
    os.symlink(elsewhere, os.path.join(manager.inbox.path, link_at))
    part = make_part(manager)
    with pytest.raises(TransferError) as info:
        manager.inbox.land(part, landing, {"top": "top"})
    assert info.value.code == "write_failed"
    assert os.listdir(elsewhere) == []
    assert partials(manager) == [part]  # kept: nothing was lost


def test_choose_tops_avoids_a_symlinked_folder_in_the_inbox(world, tmp_path):
    daemon, manager = world
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, os.path.join(manager.inbox.path, "top"))
    t, _, _ = offer(manager, [("top/a.txt", b"abc")])
    assert manager.intake.choose_tops(t) == {"top": "top (1)"}
    keys, conn, transport, sealer, _ = accept(manager, t)
    deliver(conn, file_records(sealer, 0, b"abc") + sealer.finish())
    assert replies(keys, transport) == [{"t": "complete", "saved": ["top (1)/a.txt"]}]
    assert os.listdir(elsewhere) == []


def test_choose_tops_avoids_inbox_names_and_other_live_transfers(world):
    daemon, manager = world
    os.mkdir(os.path.join(manager.inbox.path, "d"))
    os.symlink("nowhere", os.path.join(manager.inbox.path, "d (1)"))
    first, _, _ = offer(manager, [("e.txt", b"1"), ("f", b"2")])
    first.record["tops"] = {"e.txt": "e.txt", "f": "D (2)"}
    gone, _, _ = offer(manager, [("g", b"3")])
    gone.record["tops"] = {"g": "g"}
    manager.live.pop(gone.tid)  # finished: its names are free again (nothing landed)
    t, _, _ = offer(manager, [("d/a", b"a"), ("d/b", b"b"), ("e.txt", b"e"), ("g", b"g"), ("h", b"h")])
    assert manager.intake.choose_tops(t) == {"d": "d (3)", "e.txt": "e (1).txt", "g": "g", "h": "h"}


def test_two_live_offers_with_the_same_top_land_apart(world):
    daemon, manager = world
    one, outcome1, _ = offer(manager, [("pics/a.jpg", b"1")])
    two, outcome2, _ = offer(manager, [("pics/a.jpg", b"2")])
    keys1, conn1, transport1, sealer1, _ = accept(manager, one)
    keys2, conn2, transport2, sealer2, _ = accept(manager, two)
    assert one.record["tops"] == {"pics": "pics"} and two.record["tops"] == {"pics": "pics (1)"}
    deliver(conn2, file_records(sealer2, 0, b"2") + sealer2.finish())
    deliver(conn1, file_records(sealer1, 0, b"1") + sealer1.finish())
    assert read(os.path.join(manager.inbox.path, "pics", "a.jpg")) == b"1"
    assert read(os.path.join(manager.inbox.path, "pics (1)", "a.jpg")) == b"2"


# -- share paths -------------------------------------------------------------------------------------------------

def test_share_path_stays_inside_the_share_and_follows_no_link(world, tmp_path):
    daemon, manager = world
    share = tmp_path / "share"
    (share / "docs").mkdir(parents=True)
    (share / "docs" / "a.txt").write_bytes(b"a")
    (tmp_path / "secret.txt").write_bytes(b"s")
    os.symlink(tmp_path / "secret.txt", share / "link.txt")
    os.symlink(tmp_path, share / "up")
    manager.share.path = str(share)
    for path in ("", "docs", "docs/a.txt"):
        os.close(manager.share.open(path))
    for path in ("link.txt", "up/secret.txt", "up", "../secret.txt", "/etc/passwd", "docs/../../secret.txt",
                 "missing", ".hidden"):
        with pytest.raises(NotFound):
            manager.share.open(path)
    manager.share.path = None
    with pytest.raises(TransferError) as info:
        manager.share.open("docs")
    assert info.value.code == "no_share"




def test_partial_files_of_transfers_interrupted_long_ago_are_removed(tmp_path):
    """Issue 12, finding 3: stale partial files expire (7 days by default): their bytes go, the transfer fails
    with expired; a recent one keeps its partial file for a resume."""
    from p2pd.peer.limits import Limits
    daemon = FakeDaemon(tmp_path)
    manager = make_transfers(daemon, str(tmp_path / "inbox"), limits=Limits(partial_expiry=86400))
    records = []
    for n, age in ((1, 2 * 86400), (2, 3600)):
        t, _, _ = offer(manager, [("a%d.bin" % n, A)])
        write_part(manager, t, A[:256])
        t.interrupted("cut")
        t.record["updated"] = (daemon.clock.seconds() - age) * 1000
        daemon.storage.put_transfer(t.record, 0)
        records.append(t.record)
    manager.expire_partials()
    old, recent = (daemon.storage.get_transfer(r["tid"]) for r in records)
    assert old["status"] == "failed" and old["error"]["code"] == "expired" and old["have"] == [0]
    assert recent["status"] == "interrupted"
    assert partials(manager) == ["%s.0.part" % recent["key"]]
    daemon.storage.close()
