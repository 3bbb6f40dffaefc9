"""Images between real daemons (issue 14; RELIABILITY.md row 36): ``p2pctl send`` of a photo, a decompression
bomb, a truncated JPEG and a PSD renamed ``.png``; the receiver's ``transfers`` and ``watch`` show the format
and size of each image and that a preview came, ``p2pctl preview`` writes a JPEG of at most 256 px, and once
the files land each image is checked: the bomb refused from its header (its daemon's memory stays flat), the
truncated one marked not valid, the PSD never opened as an image. A hostile sender's facts and previews of
the wrong shape are dropped and its offer still stands. Uses the daemons and helpers of test_files_e2e."""

import base64
import os
import struct
import subprocess
import time
import zlib

import pytest
from PIL import Image

from tests import test_files_e2e as e2e
from tests.test_files_e2e import Link, RSSSampler, Watch, inbox, landed, p2pctl, p2pctl_start, sha256_file, \
    transfer, wait_until
from tests.test_images import make
from tests.twistd_process import rss_kb

pytestmark = pytest.mark.slow

registry, spawn, mallory = e2e.registry, e2e.spawn, e2e.mallory  # the fixtures
RSS_GROWTH_KB = 100 * 1024  # row 36: the receiver's peak RSS grows by less than this


def p2pctl_in(cwd, peer, *args):
    return subprocess.run([e2e.P2PCTL, "--data-dir", peer.data_dir] + list(args), capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL, cwd=cwd)


def real_bomb(path, side=14000):
    """A well-formed PNG of *side* x *side* black RGB pixels: about 570 KB that would take 588 MB to decode."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    packer = zlib.compressobj(9)
    row = b"\0" * (1 + 3 * side)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_images_are_previewed_before_accepting_and_checked_after_landing(tmp_path, spawn):
    alice, bob = spawn("alice"), spawn("bob", ["--accept", "ask"])
    src = tmp_path / "src"
    src.mkdir()
    make(src / "photo.jpg", "JPEG", size=(1600, 1200))
    bomb = real_bomb(src / "bomb.png")
    assert 400_000 < bomb.stat().st_size < 700_000
    good = make(tmp_path / "whole.jpg", "JPEG", size=(800, 600)).read_bytes()
    cut = src / "cut.jpg"
    cut.write_bytes(good[:len(good) * 2 // 3])
    psd = src / "layers.png"
    psd.write_bytes(b"8BPS\x00\x01" + os.urandom(2000))  # a PSD renamed .png: not one of the four formats
    notes = src / "notes.txt"
    notes.write_text("not a picture")
    names = ["photo.jpg", "bomb.png", "cut.jpg", "layers.png", "notes.txt"]
    sampler = RSSSampler(bob.pid)
    baseline = rss_kb(bob.pid)
    watch = Watch(bob)
    try:
        sending = p2pctl_start(alice, "--json", "send", bob.name, *[str(src / n) for n in names])
        offered = watch.wait(lambda e: e["event"] == "transfer" and e.get("status") == "offered", 60, "the offer")
        tid = offered["tid"]
        assert offered["names"] == names
        photo_facts = {"format": "JPEG", "width": 1600, "height": 1200}
        images = offered["images"]
        assert images[0] == photo_facts and images[3] is None and images[4] is None, images
        assert images[1]["format"] == "PNG" and images[1]["error"].startswith("too large to decode safely")
        assert images[2]["format"] == "JPEG" and images[2]["error"].startswith("not a valid image"), images[2]
        assert offered["previews"] == [0]

        shown = p2pctl(bob, "transfers")
        assert shown.returncode == 0, shown.stderr
        assert "photo.jpg  JPEG 1600x1200  (preview: p2pctl preview %s)" % tid[:8] in shown.stdout, shown.stdout
        assert "bomb.png  PNG: the sender could not read it: too large to decode safely" in shown.stdout
        assert "layers.png  " not in shown.stdout and "notes.txt  " not in shown.stdout

        wrote = p2pctl_in(tmp_path, bob, "preview", tid[:8])
        path = tmp_path / ("preview-%s-1.jpg" % tid[:8])
        assert wrote.returncode == 0, wrote.stderr
        assert wrote.stdout.startswith("wrote the preview of photo.jpg (JPEG 1600x1200) to %s (" % path)
        with Image.open(path) as small:
            assert small.format == "JPEG" and max(small.size) <= 256 and small.size == (256, 192)
            small.load()
        assert path.stat().st_size <= 16 << 10
        refused = p2pctl(bob, "preview", tid[:8], "--file", "2")
        assert refused.returncode == 1 and refused.stderr.startswith(
            "p2pctl: bomb.png has no preview: the sender could not read it (too large to decode safely"), refused

        answer = p2pctl(bob, "accept", tid[:8])
        assert answer.returncode == 0, answer.stderr
        out, err = sending.communicate(timeout=120)
        assert sending.returncode == 0, (out, err)
        checks = {}
        for name in ("photo.jpg", "bomb.png", "cut.jpg"):
            event = watch.wait(lambda e, n=name: e["event"] == "image" and e.get("name") == n, 30, "its check")
            checks[name] = event["check"]
        assert checks == {"photo.jpg": "ok", "bomb.png": "refused", "cut.jpg": "invalid"}
        time.sleep(0.5)  # an image event for the PSD or the text would have come by now
        assert not [e for e in watch.events if e["event"] == "image" and e["name"] in ("layers.png", "notes.txt")]
    finally:
        watch.close()
        peak = sampler.stop()[bob.pid]
    assert peak - baseline < RSS_GROWTH_KB, "bob's RSS grew by %d KiB" % (peak - baseline)
    assert landed(bob) == {n: sha256_file(src / n) for n in names}  # every file lands, as the sender's bytes
    record = transfer(bob, tid)
    assert record["images"][0] == dict(photo_facts, check="ok")
    assert record["images"][1]["check"] == "refused" and record["images"][3] is None
    shown = p2pctl(bob, "transfers")
    assert "photo.jpg  JPEG 1600x1200, checked: a valid image" in shown.stdout, shown.stdout
    assert "bomb.png  PNG: refused to decode: too large to decode safely" in shown.stdout
    assert "cut.jpg  JPEG 800x600: not a valid image: image file is truncated" in shown.stdout, shown.stdout
    assert bob.ctl("status")["name"] == bob.name
    log = open(bob.log_path, errors="replace").read()
    assert "Traceback" not in log and "Unhandled" not in log, log[-3000:]


def test_a_hostile_senders_image_facts_and_previews_are_dropped_and_its_offer_stands(tmp_path, spawn, mallory):
    bob = spawn("bob", ["--accept", "ask"])
    peer, ident = mallory
    jpeg = make(tmp_path / "big.jpg", "JPEG", size=(400, 300)).read_bytes()
    link = Link(bob, ident, peer.name)
    try:
        items = [{"path": "a.jpg", "size": 10, "hash": "0" * 64, "image": {"format": "JPEG", "width": "huge"}},
                 {"path": "b.jpg", "size": 10, "hash": "1" * 64,
                  "image": {"format": "JPEG", "width": 400, "height": 300}}]
        tid = os.urandom(16).hex()
        link.send_frames({"t": "offer", "tid": tid, "items": items,
                          "previews": [{"i": 1, "jpeg": base64.b64encode(jpeg).decode()}, {"i": 0, "jpeg": "A" * 9}]})
        wait_until(lambda: [t for t in e2e.transfers(bob, "in") if t["tid"] == tid], 10, "the offer")
        time.sleep(0.5)
        record = transfer(bob, tid)
        assert record["status"] == "offered"
        assert record["images"] == [None, {"format": "JPEG", "width": 400, "height": 300}]
        assert record["previews"] == []  # 400 x 300 is no preview: not kept
        missing = p2pctl(bob, "preview", tid[:8], "--file", "2")
        assert missing.returncode == 1 and "b.jpg came without a preview" in missing.stderr, missing
        assert not [f for f in link.frames if f["t"] == "error"], link.frames
    finally:
        link.close()
    log = open(bob.log_path, errors="replace").read()
    assert "dropped the image facts of 1 file(s) offered by %s" % peer.name in log
    assert "dropped a preview offered by %s" % peer.name in log and "Traceback" not in log
    assert landed(bob) == {} and os.listdir(inbox(bob)) in ([], [".p2pd-partial"])
