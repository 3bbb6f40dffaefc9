"""What a sender offers and what a receiver checks (p2pd.peer.files.offers): names, the sender's walk,
the fingerprint; and an offer's first answers on the link."""

import os

import pytest

from tests.files_world import *  # noqa: F401,F403 (the fakes, helpers and fixtures of these tests)


# -- check_offer -------------------------------------------------------------------------------------------------

def items_of(*paths):
    return [{"path": p, "size": 1, "hash": "0" * 64} for p in paths]


@pytest.mark.parametrize("path", [
    "../x", "/etc/x", "a/../../x", "C:\\x", "C:x", "x\x00y", "x\\x00y", ".", "..", "", "a/", "/", "a//b",
    "x" * 300, "a/" + "y" * 256, ".ssh/authorized_keys", ".SSH/x", "a/.git/config", "a\u2215b", "a\uff0fb",
    "\u2024\u2024/x", "x\u202etxt.exe", "name.", "name ", "   ", "a\nb", "\ud800",
])
def test_check_offer_refuses_hostile_names(path):
    with pytest.raises(filenames.BadFileName) as info:
        check_offer(items_of("fine.txt", path))
    assert info.value.code == "bad_name"


@pytest.mark.parametrize("paths", [
    ("a.txt", "a.txt"),
    ("A.txt", "a.txt"),
    ("dir/Report.PDF", "DIR/report.pdf"),
    ("a", "a/b"),
    ("a/b", "a"),
    ("A/b", "a"),
    ("x/a", "x/a/b/c"),
    ("con", "_con"),  # both land as "_con"
])
def test_check_offer_refuses_colliding_names(paths):
    """Two items that would land on one path (ignoring case), or a file that is also a folder, are refused."""
    with pytest.raises(filenames.BadFileName):
        check_offer(items_of(*paths))


def test_check_offer_accepts_ordinary_names_and_prefixes_windows_devices():
    landing = check_offer(items_of("doc..pdf", "dir/a.txt", "dir/b.txt", "dir/sub/c", "résumé.pdf",
                                   "con.txt", "a/NUL/b", "COM1", "lpt9.tar.gz", "console", "ab/cd"))
    assert landing == [("doc..pdf",), ("dir", "a.txt"), ("dir", "b.txt"), ("dir", "sub", "c"), ("résumé.pdf",),
                       ("_con.txt",), ("a", "_NUL", "b"), ("_COM1",), ("_lpt9.tar.gz",), ("console",),
                       ("ab", "cd")]


# -- collect ----------------------------------------------------------------------------------------------------

def test_collect_a_regular_file(tmp_path):
    path = tmp_path / "report.pdf"
    path.write_bytes(b"%PDF")
    assert collect([str(path)]) == ([("report.pdf", str(path))], 0)


def test_collect_walks_a_tree_and_skips_hidden_links_and_specials(tmp_path):
    root = tmp_path / "photos"
    (root / "2024" / "may").mkdir(parents=True)
    (root / "a.jpg").write_bytes(b"a")
    (root / "2024" / "b.jpg").write_bytes(b"b")
    (root / "2024" / "may" / "c.jpg").write_bytes(b"c")
    (root / "empty").mkdir()
    skipped = {
        ".hidden": lambda p: p.write_bytes(b"h"),  # hidden file
        ".git": lambda p: (p.mkdir(), (p / "config").write_bytes(b"x")),  # hidden folder (not walked)
        "link.jpg": lambda p: p.symlink_to(root / "a.jpg"),  # link to a file
        "dangling": lambda p: p.symlink_to(tmp_path / "nowhere"),  # dangling link
        "linkdir": lambda p: p.symlink_to(tmp_path),  # link to a folder (not walked)
        "fifo": lambda p: os.mkfifo(p),  # special file
        "trailing.": lambda p: p.write_bytes(b"t"),  # a name the receiver would refuse
    }
    for name, make in skipped.items():
        make(root / "2024" / name)
    entries, count = collect([str(root)])
    assert entries == [("photos/a.jpg", str(root / "a.jpg")),
                       ("photos/2024/b.jpg", str(root / "2024" / "b.jpg")),
                       ("photos/2024/may/c.jpg", str(root / "2024" / "may" / "c.jpg"))]
    assert count == len(skipped)
    check_offer(items_of(*(e[0] for e in entries)))


def test_collect_numbers_arguments_with_the_same_base_name(tmp_path):
    for d in ("one", "two", "three"):
        (tmp_path / d).mkdir()
    (tmp_path / "one" / "x.txt").write_bytes(b"1")
    (tmp_path / "two" / "X.txt").write_bytes(b"2")
    (tmp_path / "three" / "x.txt").mkdir()
    (tmp_path / "three" / "x.txt" / "in").write_bytes(b"3")
    entries, _ = collect([str(tmp_path / "one" / "x.txt"), str(tmp_path / "two" / "X.txt"),
                          str(tmp_path / "three" / "x.txt")])
    assert [e[0] for e in entries] == ["x.txt", "X (1).txt", "x (2).txt/in"]
    check_offer(items_of(*(e[0] for e in entries)))


def test_collect_renames_a_hidden_argument(tmp_path):
    (tmp_path / ".env").write_bytes(b"x")
    assert collect([str(tmp_path / ".env")]) == ([("env", str(tmp_path / ".env"))], 0)


def test_the_sender_is_told_which_names_it_offers_otherwise(tmp_path):
    """Issue 13, bug 9: `.bashrc` arrived as `bashrc` without a word to either side."""
    from p2pd.peer.files.offers import renamed
    for name in (".bashrc", "plain.txt", "x.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "x.txt").write_bytes(b"y")
    paths = [str(tmp_path / n) for n in (".bashrc", "plain.txt", "x.txt", "dir/x.txt")]
    assert renamed(paths) == [[".bashrc", "bashrc"], ["x.txt", "x (1).txt"]]


def test_collect_missing_file(tmp_path):
    with pytest.raises(FileProblem) as info:
        collect([str(tmp_path / "nope")])
    assert info.value.code == "file_missing"


@pytest.mark.parametrize("contents", [[], [".hidden"], ["link"]])
def test_collect_nothing_to_send(tmp_path, contents):
    root = tmp_path / "dir"
    root.mkdir()
    for name in contents:
        if name == "link":
            (root / name).symlink_to(tmp_path)
        else:
            (root / name).write_bytes(b"x")
    with pytest.raises(FileProblem) as info:
        collect([str(root)])
    assert info.value.code == "file_missing"
    assert "%d hidden or unsupported" % len(contents) in info.value.message


def test_collect_refuses_a_special_file_argument(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(FileProblem) as info:
        collect([str(tmp_path / "fifo")])
    assert info.value.code == "file_unreadable"


@pytest.mark.parametrize("paths", [[], "file", [""], [5], None])
def test_collect_refuses_bad_arguments(paths):
    with pytest.raises(BadRequest):
        collect(paths)


def test_collect_too_many_files(tmp_path, monkeypatch):
    monkeypatch.setattr(wire, "MAX_ITEMS", 3)
    root = tmp_path / "many"
    root.mkdir()
    for i in range(3):
        (root / ("f%d" % i)).write_bytes(b"x")
    assert len(collect([str(root)])[0]) == 3
    (root / "f3").write_bytes(b"x")
    with pytest.raises(FileProblem) as info:
        collect([str(root)])
    assert info.value.code == "too_many_files"
    with pytest.raises(FileProblem) as info:
        collect([str(root / ("f%d" % i)) for i in range(4)])
    assert info.value.code == "too_many_files"


# -- fingerprint -------------------------------------------------------------------------------------------------

def test_fingerprint_is_stable_and_order_sensitive():
    a = {"path": "a.txt", "size": 1, "hash": "1" * 64}
    b = {"path": "b.txt", "size": 2, "hash": "2" * 64}
    fp = fingerprint([a, b])
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert fingerprint([dict(b), dict(a)]) != fp
    assert fingerprint([{"hash": a["hash"], "size": 1, "path": "a.txt", "extra": 1}, b]) == fp  # key order, extras
    assert fingerprint([dict(a, size=2), b]) != fp
    assert fingerprint([dict(a, hash="3" * 64), b]) != fp
    assert fingerprint([dict(a, path="A.txt"), b]) != fp
    assert fingerprint([a]) != fp
    assert fp == hashlib.sha256(b'[["a.txt",1,"' + b"1" * 64 + b'"],["b.txt",2,"' + b"2" * 64 + b'"]]').hexdigest()


# -- offers on the link --------------------------------------------------------------------------------------------

def test_an_offer_with_a_bad_name_is_refused_with_the_tid(world):
    daemon, manager = world
    link = FakeLink()
    tid = tid_of(9)
    frame = {"t": "offer", "tid": tid, "items": [item("ok.txt", b"x"), item("../../.bashrc", b"y")]}
    manager.frame(link, wire.decode(wire.encode(frame)))
    assert manager.live == {}
    assert len(link.sent) == 1
    assert (link.sent[0]["t"], link.sent[0]["code"], link.sent[0]["ref"]) == ("error", "bad_name", tid)
    assert daemon.events[-1]["status"] == "refused" and daemon.events[-1]["tid"] == tid


def test_an_offer_waits_for_consent_and_reject_answers_it(world):
    daemon, manager = world
    t, outcome, link = offer(manager, [("a.txt", b"abc")])
    assert t.record["status"] == "offered" and link.sent == [] and outcome == []
    assert manager.reject(t.tid) == {"tid": t.tid, "status": "rejected"}
    assert link.sent[-1]["t"] == "reject" and link.sent[-1]["tid"] == t.tid
    failed_with(outcome, "rejected")
    assert manager.live == {} and inbox_files(manager) == []


def test_offers_waiting_for_an_answer_are_bounded_per_peer_in_all_and_in_files(tmp_path):
    """Issue 12, finding 4: 1,500 offers in ask mode cost +314 MB RSS and +234 MB of database and waited for
    ever. Offers past the limits are refused at the door (busy, nothing of them kept)."""
    from p2pd.peer.limits import Limits
    daemon = FakeDaemon(tmp_path)
    manager = make_transfers(daemon, str(tmp_path / "inbox"),
                             limits=Limits(pending_offers=5, pending_offers_per_peer=3, pending_files=8))
    bob, carol, dave = FakeLink("bob"), FakeLink("carol"), FakeLink("dave")
    for n in range(3):
        offer(manager, [("b%d.txt" % n, b"x")], link=bob, tid=tid_of(n + 1))
    manager.frame(bob, wire.decode(wire.encode({"t": "offer", "tid": tid_of(9), "items": [item("no.txt", b"x")]})))
    assert bob.sent[-1]["t"] == "reject" and bob.sent[-1]["code"] == "busy" and "3 offers from you" in \
        bob.sent[-1]["message"]
    assert tid_of(9) not in manager.live and daemon.storage.get_transfer(tid_of(9)) is None
    offer(manager, [("c.txt", b"x")], link=carol, tid=tid_of(10))
    offer(manager, [("c2.txt", b"x")], link=carol, tid=tid_of(11))
    manager.frame(dave, wire.decode(wire.encode({"t": "offer", "tid": tid_of(12), "items": [item("d", b"x")]})))
    assert dave.sent[-1]["code"] == "busy" and "5 offers wait" in dave.sent[-1]["message"]
    manager.reject(tid_of(10))
    files = [item("f%d" % i, b"x") for i in range(5)]
    manager.frame(dave, wire.decode(wire.encode({"t": "offer", "tid": tid_of(13), "items": files})))
    assert dave.sent[-1]["code"] == "busy" and "8 files" in dave.sent[-1]["message"]
    for t in list(manager.live.values()):
        t.result.addErrback(lambda f: None)
    daemon.storage.close()


def test_an_unanswered_offer_is_withdrawn_and_the_sender_told(tmp_path):
    from p2pd.peer.limits import Limits
    daemon = FakeDaemon(tmp_path)
    manager = make_transfers(daemon, str(tmp_path / "inbox"), limits=Limits(offer_expiry=120))
    t, outcome, link = offer(manager, [("a.txt", b"abc")])
    daemon.clock.advance(119)
    assert t.record["status"] == "offered"
    daemon.clock.advance(1)
    assert link.sent[-1]["t"] == "reject" and link.sent[-1]["code"] == "expired"
    assert "did not answer the offer within 2 minutes" in link.sent[-1]["message"]
    failed_with(outcome, "expired")
    assert manager.live == {} and daemon.clock.getDelayedCalls() == []
    daemon.storage.close()


def test_an_answered_offer_leaves_no_expiry_timer(world):
    daemon, manager = world
    t, outcome, link = offer(manager, [("a.txt", b"abc")])
    manager.reject(t.tid)
    assert not t.expiry.active()


class HeldThreads:
    """IThreads whose work runs when the test says (``finish()``), to see what happens meanwhile."""

    threaded = True

    def __init__(self):
        self.waiting = []

    def run(self, f, *args):
        from twisted.internet import defer
        d = defer.Deferred()
        self.waiting.append((d, f, args))
        return d

    def finish(self):
        from twisted.internet import defer
        while self.waiting:
            d, f, args = self.waiting.pop(0)
            defer.maybeDeferred(f, *args).chainDeferred(d)

    def call_in_reactor(self, f, *args):
        f(*args)

    def start_thread(self, target, name):
        return None


def test_one_ls_at_a_time_per_link_and_listings_off_the_reactor_thread(tmp_path):
    """Issue 12, finding 6: 300 KB of ls requests kept a --share peer busy for over a minute (scandir, sort and
    JSON on the reactor thread, each) while the replies piled up. One ls or get is answered at a time per link
    (the rest: busy), and the listing runs in a thread."""
    share = tmp_path / "share"
    share.mkdir()
    for i in range(5):
        (share / ("f%d.txt" % i)).write_bytes(b"x")
    daemon, threads = FakeDaemon(tmp_path), HeldThreads()
    manager = make_transfers(daemon, str(tmp_path / "inbox"), threads=threads, share=str(share))
    bob, carol = FakeLink("bob"), FakeLink("carol")
    for n in range(3):
        manager.frame(bob, wire.decode(wire.encode({"t": "ls", "rid": tid_of(n), "path": ""})))
    manager.frame(carol, wire.decode(wire.encode({"t": "ls", "rid": tid_of(7), "path": ""})))
    assert [f["code"] for f in bob.sent] == ["busy", "busy"] and carol.sent == []
    assert len(threads.waiting) == 2  # bob's first and carol's, not yet done
    threads.finish()
    assert bob.sent[-1]["t"] == "listing" and bob.sent[-1]["rid"] == tid_of(0) and len(bob.sent[-1]["items"]) == 5
    assert carol.sent[-1]["t"] == "listing"
    manager.frame(bob, wire.decode(wire.encode({"t": "ls", "rid": tid_of(4), "path": "nowhere"})))
    threads.finish()
    assert bob.sent[-1]["t"] == "error" and bob.sent[-1]["ref"] == tid_of(4)
    manager.frame(bob, wire.decode(wire.encode({"t": "ls", "rid": tid_of(5), "path": ""})))
    assert len(threads.waiting) == 1  # the failed one freed the link
    daemon.storage.close()


def test_one_peer_cannot_hold_more_than_its_share_of_unfinished_files(tmp_path):
    """Issue 12, finding 3: what one peer's unfinished transfers hold in partial files (interrupted ones too)
    or still need is capped; past it its next offer is refused no_space, saying why; others are not affected."""
    from p2pd.peer.limits import Limits
    daemon = FakeDaemon(tmp_path)
    manager = make_transfers(daemon, str(tmp_path / "inbox"), limits=Limits(unfinished_per_peer=5000))
    bob, carol = FakeLink("bob"), FakeLink("carol")
    first, _, _ = offer(manager, [("a.bin", b"x" * 3000)], link=bob)
    assert manager.accept(first.tid)["status"] == "accepted"
    first.have[0] = 1000
    first.interrupted("cut")  # holds 1,000 bytes in its partial file
    second, outcome, _ = offer(manager, [("b.bin", b"y" * 4500)], link=bob)
    answer = manager.accept(second.tid)
    assert answer["status"] == "rejected" and "holds or expects 1000 B of unfinished files from you" in \
        answer["error"]
    failed_with(outcome, "no_space")
    third, _, _ = offer(manager, [("c.bin", b"z" * 4500)], link=carol)
    assert manager.accept(third.tid)["status"] == "accepted"
    for t in list(manager.live.values()):
        t.result.addErrback(lambda f: None)
    daemon.storage.close()
