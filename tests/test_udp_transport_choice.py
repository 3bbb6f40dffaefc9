"""Which transport carries a transfer (issue 14): images (told by their bytes, not their names) go over the UDP
stream when the peer has one, everything else over TCP, ``--udp``/``--tcp`` override; what the line protocol
accepts for it (an offer's and a get's "transport", hello's "udp" port); and what p2pctl puts in its request."""

import io

import pytest
from PIL import Image

from p2pd.core import wire
from p2pd.errors import BadRequest
from p2pd.peer.files.errors import FileProblem
from p2pd.peer.files.offers import check_transport, choose_transport, is_image
from tests import test_cli
from tests.test_cli import ok

home, daemons, daemon, run = test_cli.home, test_cli.daemons, test_cli.daemon, test_cli.run  # the fixtures


class Link:
    def __init__(self, udp=4001):
        self.peer = "bob"
        self.peer_udp_port = udp


def image_bytes(kind):
    out = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 30, 30)).save(out, kind)
    return out.getvalue()


@pytest.fixture
def files(tmp_path):
    made = {}
    for name, data in [("photo.txt", image_bytes("PNG")),  # a PNG whatever its name says
                       ("snap", image_bytes("JPEG")),
                       ("anim.bin", image_bytes("GIF")),
                       ("pic.dat", image_bytes("WEBP")),
                       ("notes.jpg", b"just some text, named like a photo\n"),
                       ("real.png", image_bytes("PNG")),
                       ("empty.png", b"")]:
        path = tmp_path / name
        path.write_bytes(data)
        made[name] = str(path)
    return made


# --- choose_transport ---------------------------------------------------------------------------------------------

def test_images_are_told_by_their_bytes_not_their_names(files):
    assert [is_image(files[n]) for n in ("photo.txt", "snap", "anim.bin", "pic.dat", "real.png")] == [True] * 5
    assert not is_image(files["notes.jpg"]) and not is_image(files["empty.png"])
    assert not is_image(files["photo.txt"] + ".gone")  # unreadable: not an image, no error


def test_by_default_images_go_over_udp_and_the_rest_over_tcp(files):
    link = Link()
    assert choose_transport(None, [files["photo.txt"]], link) == "udp"
    assert choose_transport(None, [files["snap"], files["anim.bin"], files["pic.dat"]], link) == "udp"
    assert choose_transport(None, [files["notes.jpg"]], link) == "tcp"
    assert choose_transport(None, [files["empty.png"]], link) == "tcp"
    assert choose_transport(None, [files["real.png"], files["notes.jpg"]], link) == "tcp"  # all must be images
    assert choose_transport(None, [], link) == "tcp"


def test_images_to_a_peer_without_udp_go_over_tcp(files):
    for udp in (None, 0):
        assert choose_transport(None, [files["real.png"]], Link(udp)) == "tcp"
    link = Link()
    del link.peer_udp_port  # a link of another kind, that has no such attribute
    assert choose_transport(None, [files["real.png"]], link) == "tcp"


def test_what_was_asked_for_wins(files):
    assert choose_transport("tcp", [files["real.png"]], Link()) == "tcp"
    assert choose_transport("udp", [files["notes.jpg"]], Link()) == "udp"
    assert choose_transport("tcp", [files["real.png"]], Link(None)) == "tcp"


def test_udp_asked_for_a_peer_without_udp_is_a_no_udp_problem(files):
    with pytest.raises(FileProblem) as caught:
        choose_transport("udp", [files["real.png"]], Link(None))
    assert caught.value.code == "no_udp"
    assert "bob" in str(caught.value) and "TCP" in str(caught.value)


def test_check_transport_takes_tcp_and_udp_only():
    assert check_transport("tcp") == "tcp" and check_transport("udp") == "udp"
    for bad in ("quic", "UDP", "", None, 1):
        with pytest.raises(BadRequest):
            check_transport(bad)


# --- the line protocol --------------------------------------------------------------------------------------------

TID = "ab" * 16
OFFER = {"t": "offer", "tid": TID, "items": [{"path": "a.png", "size": 3, "hash": "0" * 64}]}
GET = {"t": "get", "rid": TID, "path": "a.png"}
HELLO = {"t": "hello", "v": 1, "name": "alice", "agent": "p2pd/0.1.0"}


def decode(frame):
    return wire.decode(wire.encode(frame))


@pytest.mark.parametrize("base", [OFFER, GET], ids=["offer", "get"])
def test_an_offer_or_get_may_name_tcp_or_udp_and_nothing_else(base):
    assert "transport" not in decode(base)
    for good in wire.TRANSPORTS:
        assert decode(dict(base, transport=good))["transport"] == good
    for bad in ("quic", "UDP", "", 17, True, ["udp"], {"t": "udp"}):
        with pytest.raises(wire.FrameError) as caught:
            decode(dict(base, transport=bad))
        assert "transport" in str(caught.value) and caught.value.ref == TID


def test_hello_names_a_udp_port_from_1_to_65535():
    assert "udp" not in decode(HELLO)
    for port in (1, 4001, 65535):
        assert decode(dict(HELLO, udp=port))["udp"] == port
    for bad in (0, -1, 65536, 1 << 40, "4001", 4001.0, True, [4001]):
        with pytest.raises(wire.FrameError) as caught:
            decode(dict(HELLO, udp=bad))
        assert "udp" in str(caught.value)


def test_our_hello_says_our_udp_port_only_when_we_have_one():
    assert "udp" not in wire.hello("alice", "p2pd/1")
    assert "udp" not in wire.hello("alice", "p2pd/1", None)
    assert decode(wire.hello("alice", "p2pd/1", 4001))["udp"] == 4001


# --- p2pctl -------------------------------------------------------------------------------------------------------

SENT = {"tid": TID, "names": ["photo.txt"], "files": 1, "sent": 120, "seconds": 0.5}


@pytest.mark.parametrize("flag, transport", [([], None), (["--udp"], "udp"), (["--tcp"], "tcp")])
def test_send_puts_the_transport_asked_for_in_its_request(run, daemon, files, flag, transport):
    daemon.handlers["send"] = lambda r: ok(dict(SENT, transport=r.get("transport") or "udp"))
    code, out, err = run("send", "bob", files["photo.txt"], "--quiet", *flag)
    assert code == 0, err
    (request,) = [r for r in daemon.requests if r["cmd"] == "send"]
    assert request.get("transport") == transport and request["paths"] == [files["photo.txt"]]
    assert "over %s" % (transport or "udp").upper() in out  # the outcome says what carried it


@pytest.mark.parametrize("flag, transport", [([], None), (["--udp"], "udp"), (["--tcp"], "tcp")])
def test_get_puts_the_transport_asked_for_in_its_request(run, daemon, flag, transport):
    daemon.handlers["get"] = lambda r: ok({"saved": ["/inbox/a.png"], "sent": 10, "seconds": 1.0,
                                           "transport": r.get("transport") or "tcp"})
    code, out, err = run("get", "bob", "pics/a.png", "--quiet", *flag)
    assert code == 0, err
    (request,) = [r for r in daemon.requests if r["cmd"] == "get"]
    assert request.get("transport") == transport and request["name"] == "pics/a.png"
    assert "got pics/a.png from bob over %s" % (transport or "tcp").upper() in out


def test_a_no_udp_refusal_from_the_daemon_reaches_the_user(run, daemon, files):
    daemon.handlers["send"] = lambda r: test_cli.fail("no_udp", "bob takes no UDP streams (an older p2pd?); "
                                                                "send over TCP")
    code, out, err = run("send", "bob", files["notes.jpg"], "--quiet", "--udp")
    assert code != 0
    assert "takes no UDP streams" in err
