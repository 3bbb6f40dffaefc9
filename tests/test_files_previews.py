"""Images in transfers (p2pd.peer.files.previews, issue 14): the sender's offer says which files are images
and carries a preview of the first ones, made in a thread; the receiver keeps only facts of the right shape and
previews it has checked itself, shows them, and checks each image once it has landed (a file that does not
decode still lands, marked). Run on the fakes of tests/files_world.py."""

import base64
import os
import time

import pytest
from twisted.logger import formatEvent, globalLogPublisher

from p2pd.core import images, jsonbody
from p2pd.errors import NotFound
from p2pd.peer.files import previews as pmod
from tests import files_world
from tests.files_world import FakeDaemon, FakeLink, InlineThreads, accept, deliver, file_records, item, \
    make_transfers, read, tid_of, wire
from tests.test_files_offers import HeldThreads
from tests.test_images import make, png_header_only

world = files_world.world  # the fixture: a Transfers on inline threads
FACTS = {"format": "JPEG", "width": 4032, "height": 3024}
THUMBNAIL, CHECK_PREVIEW = images.thumbnail, images.check_preview  # for the tests' own use (the daemon's are guarded)


class RecordingThreads(InlineThreads):
    """Inline threads that note what ran in them, and say whether something runs inside one now."""

    def __init__(self):
        self.ran = []
        self.inside = False

    def run(self, f, *args):
        self.ran.append(f.__name__)
        self.inside = True
        try:
            return super().run(f, *args)
        finally:
            self.inside = False


@pytest.fixture
def logged():
    """The log lines emitted during the test, formatted."""
    seen = []

    def observer(event):
        seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    yield seen
    globalLogPublisher.removeObserver(observer)


@pytest.fixture
def threaded(tmp_path, monkeypatch):
    """A Transfers on RecordingThreads whose image work (thumbnail, inspect) fails the test if it runs outside
    a thread: ``(daemon, manager, threads)``."""
    daemon, threads = FakeDaemon(tmp_path), RecordingThreads()
    manager = make_transfers(daemon, str(tmp_path / "inbox"), threads=threads)
    for name in ("thumbnail", "inspect", "check_preview", "describe"):
        real = getattr(images, name)

        def guarded(*args, _real=real, **kwargs):
            assert threads.inside, "image work on the reactor thread"
            return _real(*args, **kwargs)

        monkeypatch.setattr(images, name, guarded)
    yield daemon, manager, threads
    for t in list(manager.live.values()):
        t.result.addErrback(lambda f: None)
    daemon.storage.close()


def b64(data):
    return base64.b64encode(data).decode()


def a_preview(tmp_path, size=(800, 600)):
    return THUMBNAIL(make(tmp_path / "source.jpg", "JPEG", size))


def offer_frame(n, items, previews=None):
    frame = {"t": "offer", "tid": tid_of(n), "items": items}
    if previews is not None:
        frame["previews"] = previews
    return wire.decode(wire.encode(frame))


def send_frame(manager, paths):
    """The offer frame a send of *paths* puts on the link."""
    link = FakeLink(outgoing=True)
    manager.send("bob", [str(p) for p in paths], link=link).addErrback(lambda f: None)
    (frame,) = link.sent
    assert wire.decode(wire.encode(frame)) == frame
    return frame


# -- the sender ----------------------------------------------------------------------------------------------------

def test_an_offer_says_which_files_are_images_and_carries_a_preview_made_in_a_thread(tmp_path, threaded):
    """By content, whatever the name: a JPEG gets its format and size and a preview; a text file nothing; a
    decompression bomb its error (and the offer goes all the same)."""
    daemon, manager, threads = threaded
    photo = make(tmp_path / "photo.txt", "JPEG", (1200, 900))
    notes = tmp_path / "notes.png"
    notes.write_text("not a picture")
    bomb = png_header_only(tmp_path / "bomb.png", 14000, 14000)
    frame = send_frame(manager, [photo, notes, bomb])
    items = frame["items"]
    assert items[0]["image"] == {"format": "JPEG", "width": 1200, "height": 900}
    assert "image" not in items[1]
    assert items[2]["image"]["format"] == "PNG" and set(items[2]["image"]) == {"format", "error"}
    assert items[2]["image"]["error"].startswith("too large to decode safely")
    (preview,) = frame["previews"]
    assert preview["i"] == 0 and CHECK_PREVIEW(base64.b64decode(preview["jpeg"])) == (256, 192)
    assert "describe_files" in threads.ran


def test_an_offer_carries_two_previews_at_most(tmp_path, world):
    daemon, manager = world
    frame = send_frame(manager, [make(tmp_path / ("p%d.png" % i), "PNG") for i in range(3)])
    assert [p["i"] for p in frame["previews"]] == [0, 1]
    assert all("image" in i for i in frame["items"])


def test_what_does_not_fit_the_line_is_left_out_facts_first_then_previews():
    """An offer never grows past its line because of its images: the facts go on as long as they fit, in order,
    and a preview only if it fits beside them."""
    facts = {"format": "JPEG", "width": 10, "height": 10}
    cost = len(jsonbody.dumps(facts)) + len(',"image":')
    items = [{"path": "f%d.jpg" % i, "size": 1, "hash": "0" * 64} for i in range(5)]
    frame = {"t": "offer", "tid": tid_of(1), "items": items}
    pad = wire.MAX_LINE - pmod.LINE_MARGIN - len(wire.encode(frame)) - (2 * cost + 5)
    items[0]["path"] += "x" * pad
    pmod.fit(frame, [(dict(facts), b"\xff\xd8\xff" * 100)] * 5)
    assert ["image" in i for i in items] == [True, True, False, False, False]
    assert "previews" not in frame and len(wire.encode(frame)) < wire.MAX_LINE
    items = [{"path": "f%d.jpg" % i, "size": 1, "hash": "0" * 64} for i in range(2)]
    frame = {"t": "offer", "tid": tid_of(1), "items": items}
    pmod.fit(frame, [(dict(facts), os.urandom(images.THUMB_BYTES))] * 2)
    assert [p["i"] for p in frame["previews"]] == [0, 1] and len(wire.encode(frame)) < wire.MAX_LINE


# -- the receiver: what came ---------------------------------------------------------------------------------------

def test_an_offered_image_is_shown_with_its_facts_and_its_checked_preview(tmp_path, threaded):
    daemon, manager, threads = threaded
    thumb = a_preview(tmp_path)
    frame = offer_frame(1, [dict(item("photo.jpg", b"data"), image=FACTS), item("notes.txt", b"x")],
                        [{"i": 0, "jpeg": b64(thumb)}])
    manager.frame(FakeLink(), frame)
    (entry,) = manager.list()
    assert entry["status"] == "offered" and entry["images"] == [FACTS, None] and entry["previews"] == [0]
    (shown,) = [e for e in daemon.events if e.get("status") == "offered"]
    assert shown["images"] == [FACTS, None] and shown["previews"] == [0]
    got = manager.preview(tid_of(1))
    assert base64.b64decode(got["jpeg"]) == thumb and daemon.storage.preview(tid_of(1), 0) == thumb
    assert (got["index"], got["name"], got["image"], got["bytes"]) == (0, "photo.jpg", FACTS, len(thumb))
    assert "check_previews" in threads.ran


def test_the_offer_is_shown_once_its_previews_are_checked_and_not_after_an_answer(tmp_path):
    """The watchers hear of an offer once its preview was checked (in a thread), with the preview; an offer
    rejected meanwhile is not shown as waiting afterwards."""
    daemon, threads = FakeDaemon(tmp_path), HeldThreads()
    manager = make_transfers(daemon, str(tmp_path / "inbox"), threads=threads)
    thumb = b64(a_preview(tmp_path))
    for n in (1, 2):
        manager.frame(FakeLink(), offer_frame(n, [dict(item("photo.jpg", b"data"), image=FACTS)],
                                              [{"i": 0, "jpeg": thumb}]))
    assert [e for e in daemon.events if e.get("status") == "offered"] == []
    manager.reject(tid_of(2))
    threads.finish()
    offered = [e for e in daemon.events if e.get("status") == "offered"]
    assert [e["tid"] for e in offered] == [tid_of(1)] and offered[0]["previews"] == [0]
    for t in list(manager.live.values()):
        t.result.addErrback(lambda f: None)
    daemon.storage.close()


BAD_FACTS = ["JPEG", ["JPEG"], None, {"format": "BMP", "width": 1, "height": 1},
             {"format": "JPEG", "width": True, "height": 1}, {"format": "JPEG", "width": 0, "height": 1},
             {"format": "JPEG", "width": 2 ** 31, "height": 1}, {"format": "JPEG", "width": 1.5, "height": 1},
             {"format": "JPEG", "width": 10}, {"format": "JPEG"}, dict(FACTS, extra=1),
             {"format": "JPEG", "error": "x" * 301}, {"format": "JPEG", "error": 5}]


@pytest.mark.parametrize("facts", BAD_FACTS)
def test_image_facts_of_the_wrong_shape_are_dropped_and_the_offer_stands(world, logged, facts):
    daemon, manager = world
    link = FakeLink()
    manager.frame(link, offer_frame(1, [dict(item("photo.jpg", b"data"), image=facts)]))
    (entry,) = manager.list()
    assert entry["status"] == "offered" and "images" not in entry and link.sent == []
    assert len([line for line in logged if "dropped the image facts of 1 file(s) offered by bob" in line]) == 1


def bad_previews(tmp_path):
    good = b64(a_preview(tmp_path))
    png = b64(make(tmp_path / "p.png", "PNG", (50, 50)).read_bytes())
    wide = b64(images.thumbnail(make(tmp_path / "w.jpg", "JPEG", (300, 10)), px=300))
    cut = b64(base64.b64decode(good)[:len(good) // 3])
    return {"not a list": "x", "an object": {"i": 0, "jpeg": good}, "three": [{"i": 0, "jpeg": good}] * 3,
            "no jpeg": [{"i": 0}], "no such file": [{"i": 5, "jpeg": good}], "of a text": [{"i": 1, "jpeg": good}],
            "a bool index": [{"i": True, "jpeg": good}], "huge": [{"i": 0, "jpeg": "A" * 30000}],
            "not base64": [{"i": 0, "jpeg": "!!!!"}], "a png": [{"i": 0, "jpeg": png}],
            "300 px wide": [{"i": 0, "jpeg": wide}], "truncated": [{"i": 0, "jpeg": cut}]}


@pytest.mark.parametrize("case", ["not a list", "an object", "three", "no jpeg", "no such file", "of a text",
                                  "a bool index", "huge", "not base64", "a png", "300 px wide", "truncated"])
def test_a_preview_that_is_not_a_small_jpeg_is_dropped_and_the_offer_stands(tmp_path, world, logged, case):
    daemon, manager = world
    link = FakeLink()
    frame = offer_frame(1, [dict(item("photo.jpg", b"data"), image=FACTS), item("notes.txt", b"x")],
                        bad_previews(tmp_path)[case])
    manager.frame(link, frame)
    (entry,) = manager.list()
    assert entry["status"] == "offered" and entry["images"] == [FACTS, None] and entry["previews"] == []
    assert link.sent == [] and daemon.storage.preview(tid_of(1), 0) is None
    assert any("dropped a preview offered by bob in %s" % tid_of(1) in line for line in logged), logged
    with pytest.raises(NotFound, match="came without a preview"):
        manager.preview(tid_of(1))


def test_a_preview_named_twice_is_kept_once(tmp_path, world, logged):
    daemon, manager = world
    good = b64(a_preview(tmp_path))
    manager.frame(FakeLink(), offer_frame(1, [dict(item("photo.jpg", b"data"), image=FACTS)],
                                          [{"i": 0, "jpeg": good}, {"i": 0, "jpeg": good}]))
    assert manager.list()[0]["previews"] == [0]


def test_preview_says_why_there_is_none(tmp_path, world):
    daemon, manager = world
    bomb = {"format": "PNG", "error": "too large to decode safely: 14000 x 14000 pixels"}
    manager.frame(FakeLink(), offer_frame(1, [item("notes.txt", b"x"), dict(item("bomb.png", b"y"), image=bomb),
                                              dict(item("photo.jpg", b"z"), image=FACTS)],
                                          [{"i": 2, "jpeg": b64(a_preview(tmp_path))}]))
    for index, why in ((0, "notes.txt has no preview: the sender did not offer it as an image"),
                       (1, "bomb.png has no preview: the sender could not read it \\(too large to decode safely"),
                       (5, "transfer %s has no file 6: it has 3" % tid_of(1))):
        with pytest.raises(NotFound, match=why):
            manager.preview(tid_of(1), index)
    assert manager.preview(tid_of(1))["index"] == 2  # the first that has one
    with pytest.raises(NotFound, match="no transfer %s" % tid_of(9)):
        manager.preview(tid_of(9))
    daemon.storage._db.execute("DELETE FROM previews")
    with pytest.raises(NotFound, match="the preview of photo.jpg was removed: the newest 1000 are kept"):
        manager.preview(tid_of(1))
    path = tmp_path / "mine.jpg"
    frame = send_frame(manager, [make(path, "JPEG")])
    out = [t for t in manager.live.values() if t.direction == "out"][0]
    assert frame["previews"]
    with pytest.raises(NotFound, match="is one you sent"):
        manager.preview(out.tid)


# -- the receiver: what landed -------------------------------------------------------------------------------------

def receive(manager, name, data, facts=None, n=1):
    """Offer *data* as *name* from bob (with *facts*), accept it and stream it in; the transfer."""
    it = item(name, data)
    if facts is not None:
        it["image"] = facts
    manager.frame(FakeLink(), offer_frame(n, [it]))
    t = manager.live[tid_of(n)]
    keys, conn, transport, sealer, _ = accept(manager, t)
    deliver(conn, file_records(sealer, 0, data) + sealer.finish(), piece=4096)
    assert t.record["status"] == "done"
    return t


def image_events(daemon):
    return [e for e in daemon.events if e.get("event") == "image"]


def test_a_received_image_is_checked_in_a_thread_once_it_lands(tmp_path, threaded):
    daemon, manager, threads = threaded
    data = make(tmp_path / "a.png", "PNG").read_bytes()
    t = receive(manager, "holiday.png", data)
    found = {"format": "PNG", "width": 640, "height": 480, "check": "ok"}
    assert t.items[0]["checked"] == found and "inspect_landed" in threads.ran
    assert daemon.storage.get_transfer(t.tid)["items"][0]["checked"] == found
    assert manager.list()[0]["images"] == [found]
    (event,) = image_events(daemon)
    assert event == dict(found, event="image", tid=t.tid, peer="bob", direction="in", name="holiday.png",
                         saved="holiday.png", inbox=manager.inbox.path)


def test_an_image_that_does_not_decode_lands_marked_not_valid(tmp_path, world):
    daemon, manager = world
    good = make(tmp_path / "a.png", "PNG").read_bytes()
    cut = good[:len(good) // 2]
    t = receive(manager, "cut.png", cut, facts={"format": "PNG", "width": 640, "height": 480})
    assert read(os.path.join(manager.inbox.path, "cut.png")) == cut  # the sender's bytes, as they came
    checked = t.items[0]["checked"]
    assert checked["check"] == "invalid" and checked["problem"].startswith("not a valid image"), checked
    assert image_events(daemon)[0]["check"] == "invalid"


def test_a_bomb_is_refused_from_its_header_in_milliseconds(tmp_path, world):
    daemon, manager = world
    bomb = png_header_only(tmp_path / "bomb.png", 14000, 14000).read_bytes()
    started = time.monotonic()
    t = receive(manager, "bomb.png", bomb)
    assert time.monotonic() - started < 0.5
    checked = t.items[0]["checked"]
    assert checked["check"] == "refused" and "too large to decode safely" in checked["problem"], checked


def test_a_file_offered_as_an_image_that_is_none_is_marked_and_others_are_left_alone(world):
    daemon, manager = world
    t = receive(manager, "photo.jpg", b"MZ this is a program", facts=FACTS)
    assert t.items[0]["checked"] == {"format": "JPEG", "check": "invalid",
                                     "problem": "not a valid image: not a PNG, JPEG, GIF or WEBP image"}
    t = receive(manager, "notes.txt", b"just text", n=2)
    assert "checked" not in t.items[0] and len(image_events(daemon)) == 1


def test_image_work_runs_one_at_a_time(tmp_path):
    """Decoding takes memory: two images are never decoded at once, whatever the thread pool's size."""
    daemon, threads = FakeDaemon(tmp_path), HeldThreads()
    manager = make_transfers(daemon, str(tmp_path / "inbox"), threads=threads)
    done = []
    for n in range(2):
        manager.previews._run(lambda n=n: done.append(n))
    assert len(threads.waiting) == 1
    threads.finish()
    assert done == [0, 1] and threads.waiting == []
    daemon.storage.close()


def test_a_landed_file_is_opened_for_its_check_without_following_links(tmp_path, world):
    daemon, manager = world
    os.makedirs(os.path.join(manager.inbox.path, "dir"))
    make(tmp_path / "a.png", "PNG")
    os.symlink(tmp_path / "a.png", os.path.join(manager.inbox.path, "dir", "link.png"))
    os.symlink(tmp_path, os.path.join(manager.inbox.path, "linkdir"))
    for saved in ("dir/link.png", "linkdir/a.png"):
        with pytest.raises(OSError):
            manager.inbox.open_landed(saved)
        assert pmod.inspect_landed(manager.inbox, saved, None) is None
        assert pmod.inspect_landed(manager.inbox, saved, FACTS)["check"] == "invalid"


def test_only_an_offer_that_waits_for_an_answer_has_its_previews_checked(tmp_path):
    """An offer accepted at once (--accept auto) lands anyway: its previews are not decoded, nor kept."""
    daemon, threads = FakeDaemon(tmp_path), RecordingThreads()
    manager = make_transfers(daemon, str(tmp_path / "inbox"), threads=threads, policy="auto")
    manager.frame(FakeLink(), offer_frame(1, [dict(item("photo.jpg", b"data"), image=FACTS)],
                                          [{"i": 0, "jpeg": b64(a_preview(tmp_path))}]))
    assert manager.live[tid_of(1)].record["status"] == "accepted"
    assert "check_previews" not in threads.ran and daemon.storage.preview(tid_of(1), 0) is None
    manager.live[tid_of(1)].result.addErrback(lambda f: None)
    daemon.storage.close()


def test_a_folder_of_broken_images_costs_the_sender_a_few_tries_not_one_each(tmp_path, monkeypatch):
    good = make(tmp_path / "good.jpg", "JPEG").read_bytes()
    paths = []
    for i in range(10):
        path = tmp_path / ("cut%d.jpg" % i)
        path.write_bytes(good[:len(good) // 2])
        paths.append(path)
    tried = []
    monkeypatch.setattr(images, "thumbnail", lambda path: tried.append(path) or THUMBNAIL(path))
    described = pmod.describe_files(paths)
    assert len(tried) == 2 * pmod.MAX_PREVIEWS
    assert all(facts["format"] == "JPEG" for facts, _ in described) and not any(thumb for _, thumb in described)
    assert [("error" in facts) for facts, _ in described] == [True] * 4 + [False] * 6
