"""p2pctl and images (issue 14), against the fake daemon of tests/test_cli.py: ``transfers`` and ``watch`` say
which offered files are images (format, size, whether a preview came) and what the check found once they
landed; ``preview`` writes the kept preview to a file and says where, or why there is none."""

import base64
import json
import os

from p2pd.cli import exits
from tests import test_cli
from tests.test_cli import HOSTILE, assert_terminal_safe, fail, ok, run_watch

home, daemons, daemon, run = test_cli.home, test_cli.daemons, test_cli.daemon, test_cli.run  # the fixtures

TID = "1a2b3c4d" + "0" * 24
JPEG = b"\xff\xd8\xff\xe0" + b"preview bytes"
OFFER = {"tid": TID, "direction": "in", "peer": "alice", "status": "offered", "files": 3, "bytes": 3000,
         "done": 0, "names": ["photo.jpg", "notes.txt", "bomb.png"], "sizes": [1000, 1000, 1000],
         "images": [{"format": "JPEG", "width": 4032, "height": 3024}, None,
                    {"format": "PNG", "error": "too large to decode safely: 14000 x 14000 pixels"}],
         "previews": [0], "inbox": "/home/bob/inbox"}
LANDED = dict(OFFER, tid="9" * 32, status="done", done=3000, saved=["photo.jpg", "notes.txt", "bomb.png"],
              previews=[], images=[{"format": "JPEG", "width": 4032, "height": 3024, "check": "ok"}, None,
                                   {"format": "PNG", "check": "refused",
                                    "problem": "too large to decode safely: 14000 x 14000 pixels"}])


def serve(daemon, preview=None):
    daemon.handlers["transfers"] = lambda r: ok([OFFER, LANDED])
    daemon.handlers["preview"] = preview or (lambda r: ok({"tid": r["tid"], "index": r.get("index") or 0,
                                                          "name": "photo.jpg", "bytes": len(JPEG),
                                                          "image": OFFER["images"][0],
                                                          "jpeg": base64.b64encode(JPEG).decode()}))


def test_transfers_shows_the_images_of_an_offer_and_what_their_check_found(run, daemon):
    serve(daemon)
    code, out, err = run("transfers")
    assert code == 0, err
    lines = out.splitlines()
    assert "          photo.jpg  JPEG 4032x3024  (preview: p2pctl preview 1a2b3c4d)" in lines, out
    assert "          bomb.png  PNG: the sender could not read it: too large to decode safely: 14000 x 14000 " \
           "pixels" in lines, out
    assert "          photo.jpg  JPEG 4032x3024, checked: a valid image" in lines, out
    assert "          bomb.png  PNG: refused to decode: too large to decode safely: 14000 x 14000 pixels" in lines
    assert not any(line.strip().startswith("notes.txt") for line in lines)


def test_watch_says_which_offered_files_are_images_in_the_offers_one_line(run, daemon):
    events = [dict(OFFER, event="transfer"),
              {"event": "image", "tid": TID, "peer": "alice", "direction": "in", "name": "cut.png" + HOSTILE,
               "saved": "cut.png", "inbox": "/home/bob/inbox", "format": "PNG", "width": 640, "height": 480,
               "check": "invalid", "problem": "not a valid image: image file is truncated"}]
    code, out, err = run_watch(run, daemon, events)
    lines = out.splitlines()
    assert len(lines) == 2, out
    assert lines[0].endswith("p2pctl reject 1a2b3c4d; photo.jpg  JPEG 4032x3024  (preview: p2pctl preview "
                             "1a2b3c4d); bomb.png  PNG: the sender could not read it: too large to decode "
                             "safely: 14000 x 14000 pixels"), lines[0]
    assert lines[1].endswith("from alice, saved as /home/bob/inbox/cut.png: PNG 640x480: not a valid image: "
                             "image file is truncated"), lines[1]
    assert_terminal_safe(out)


def test_preview_writes_the_jpeg_into_the_current_directory_and_never_replaces_a_file(run, daemon, tmp_path,
                                                                                       monkeypatch):
    serve(daemon)
    monkeypatch.chdir(tmp_path)
    code, out, err = run("preview", "1a2b")
    path = str(tmp_path / "preview-1a2b3c4d-1.jpg")
    assert code == 0, err
    assert out == "wrote the preview of photo.jpg (JPEG 4032x3024) to %s (17 B)\n" % path
    assert open(path, "rb").read() == JPEG
    assert [r for r in daemon.requests if r["cmd"] == "preview"][-1]["tid"] == TID
    code, out, err = run("preview", "1a2b")
    assert code == exits.ERROR and err == "p2pctl: %s exists already: name another file with --out FILE\n" % path


def test_preview_out_and_file_and_json(run, daemon, tmp_path):
    serve(daemon)
    out_path = tmp_path / "mine.jpg"
    out_path.write_bytes(b"old")
    code, out, err = run("--json", "preview", TID, "--file", "3", "--out", str(out_path))
    assert code == 0, err
    assert json.loads(out) == {"tid": TID, "index": 2, "name": "photo.jpg", "path": str(out_path), "bytes": 17}
    assert [r for r in daemon.requests if r["cmd"] == "preview"][-1]["index"] == 2
    assert out_path.read_bytes() == JPEG  # --out names the file: it is replaced
    code, out, err = run("preview", TID, "--file", "0")
    assert code == exits.USAGE and "--file counts the files of the transfer from 1" in err


def test_preview_of_a_transfer_without_one_says_why(run, daemon, tmp_path, monkeypatch):
    serve(daemon, lambda r: fail("not_found", "notes.txt has no preview: the sender did not offer it as an image"))
    monkeypatch.chdir(tmp_path)
    code, out, err = run("preview", "1a2b")
    assert code == exits.ERROR
    assert err == "p2pctl: notes.txt has no preview: the sender did not offer it as an image\n"
    assert os.listdir(tmp_path) == []
    code, out, err = run("preview", "ffff")
    assert code == exits.USAGE and "no transfer matches ffff" in err
