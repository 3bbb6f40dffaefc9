"""Chat rooms end to end, first part: managing rooms (create, join, leave, groups, users) with real daemons.

Three peers of the seed's figure 1 (jim, george, michael) against one registry, driven through ``p2pctl`` as a
user would: every success and every failure case the seed lists gets its own clear line and exit code.
Room messages (``public``), announcements and ``p2pctl shell`` come with the rest of the rooms issue.
"""

import json
import os
import subprocess
import sys

import pytest

from tests.peer_process import ControlError, PeerProcess
from tests.registry_process import RegistryProcess

pytestmark = pytest.mark.slow

P2PCTL = os.path.join(os.path.dirname(sys.executable), "p2pctl")


def p2pctl(peer, *args):
    return subprocess.run([P2PCTL, "--data-dir", peer.data_dir] + list(args), capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    base = tmp_path_factory.mktemp("rooms")
    with RegistryProcess(str(base / "registry")) as registry:
        peers = [PeerProcess(str(base / name), name, registry.http) for name in ("jim", "george", "michael")]
        try:
            for peer in peers:
                peer.start()
            yield peers
        finally:
            for peer in peers:
                peer.stop()


def test_everyone_is_in_general_from_the_start(trio):
    jim, george, michael = trio
    rooms = {r["name"]: r for r in jim.ctl("groups")}
    assert rooms["General"]["member_count"] == 3
    out = p2pctl(george, "groups")
    assert out.returncode == 0 and "General" in out.stdout
    users = p2pctl(jim, "users")
    assert users.returncode == 0
    # issue 13, bug 7: everyone online, ourselves too (marked), as the shell and the seed's session list them
    assert "george" in users.stdout and "michael" in users.stdout and "jim (you)" in users.stdout


def test_create_join_leave_and_every_failure(trio):
    jim, george, michael = trio
    out = p2pctl(michael, "create", "G1")
    assert out.returncode == 0 and out.stdout.strip() == "created room G1 (no members yet: p2pctl join G1)"
    out = p2pctl(michael, "public", "G1", "too early")
    assert out.returncode == 1 and "you are not a member of G1" in out.stderr
    assert p2pctl(michael, "join", "G1").returncode == 0

    out = p2pctl(jim, "create", "g1")  # unique ignoring case
    assert out.returncode == 1 and out.stderr.strip() == "p2pctl: room G1 already exists" and not out.stdout

    out = p2pctl(jim, "join", "G1")
    assert out.returncode == 0 and out.stdout.strip() == "joined G1 (2 members: jim, michael)"
    out = p2pctl(jim, "join", "G1")
    assert out.returncode == 1 and out.stderr.strip() == "p2pctl: you are already a member of G1"

    out = p2pctl(george, "join", "G2")
    assert out.returncode == 1 and out.stderr.strip() == "p2pctl: room G2 does not exist"
    out = p2pctl(george, "leave", "G2")
    assert out.returncode == 1 and "does not exist" in out.stderr
    out = p2pctl(george, "leave", "G1")
    assert out.returncode == 1 and out.stderr.strip() == "p2pctl: you are not a member of G1"
    out = p2pctl(george, "leave", "General")
    assert out.returncode == 1 and out.stderr.strip() == "p2pctl: everyone stays in General"

    out = p2pctl(jim, "leave", "G1")
    assert out.returncode == 0 and out.stdout.strip() == "left G1 (1 member: michael)"
    room = {r["name"]: r for r in jim.ctl("groups")}["G1"]
    assert room["member_count"] == 1 and room["creator"] == "michael"

    out = p2pctl(jim, "--json", "join", "G1")
    assert out.returncode == 0 and json.loads(out.stdout)["members"] == ["jim", "michael"]


@pytest.mark.parametrize("name", ["bad name", "x" * 33, "", "G/1", "\u0413"])
def test_invalid_room_names_are_refused_before_the_registry(trio, name):
    jim = trio[0]
    out = p2pctl(jim, "create", name)
    assert out.returncode == 2 and "invalid room name" in out.stderr
    with pytest.raises(ControlError) as e:
        jim.ctl("create", room=name)
    assert e.value.code == "invalid_name"


def room_history(peer, room):
    return [(m["sender"], m["body"]) for m in peer.ctl("history", conversation=room, limit=100)]


def wait_for(predicate, what, timeout=20):
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("timed out waiting for " + what)


def test_public_messages_reach_every_member_once_in_order(trio):
    jim, george, michael = trio
    assert p2pctl(george, "create", "Fans").returncode == 0
    assert p2pctl(george, "join", "Fans").returncode == 0
    assert p2pctl(jim, "join", "Fans").returncode == 0
    assert p2pctl(michael, "join", "Fans").returncode == 0
    bodies = ["fan message %d" % n for n in range(20)]
    for body in bodies:
        out = p2pctl(george, "public", "Fans", body)
        assert out.returncode == 0 and out.stdout.strip() == "sent to Fans (2 other members)"
    for member in (jim, michael):
        wait_for(lambda m=member: len(room_history(m, "Fans")) == 20, "%s to get 20 room messages" % member.name)
        assert room_history(member, "Fans") == [("george", b) for b in bodies]
    assert room_history(george, "Fans") == [("george", b) for b in bodies]  # the sender's own copy, once
    assert george.ctl("status")["outbox"] == 0


def test_public_failures(trio):
    jim, george, michael = trio
    out = p2pctl(jim, "public", "Nowhere", "hi")
    assert out.returncode == 1 and out.stderr.strip() == "p2pctl: room Nowhere does not exist"
    assert p2pctl(michael, "create", "Closed").returncode == 0
    assert p2pctl(michael, "join", "Closed").returncode == 0
    out = p2pctl(jim, "public", "Closed", "hi")
    assert out.returncode == 1 and "you are not a member of Closed" in out.stderr
    out = p2pctl(jim, "private", "nobody", "hi")
    assert out.returncode == 4 and "unknown peer nobody" in out.stderr


def test_leaving_stops_delivery_and_an_offline_member_gets_room_messages_on_return(trio):
    jim, george, michael = trio
    assert p2pctl(michael, "create", "G7").returncode == 0
    assert p2pctl(michael, "join", "G7").returncode == 0
    assert p2pctl(jim, "join", "G7").returncode == 0
    assert p2pctl(george, "join", "G7").returncode == 0
    george.stop()
    out = p2pctl(michael, "public", "G7", "while george is away")
    assert out.returncode == 0
    wait_for(lambda: ("michael", "while george is away") in room_history(jim, "G7"), "jim to get it")
    george.start()
    wait_for(lambda: ("michael", "while george is away") in room_history(george, "G7"), "george to get it back")
    assert p2pctl(jim, "leave", "G7").returncode == 0
    assert p2pctl(michael, "public", "G7", "after jim left").returncode == 0
    wait_for(lambda: ("michael", "after jim left") in room_history(george, "G7"), "george to get it")
    assert ("michael", "after jim left") not in room_history(jim, "G7")


class ShellProcess:
    """``p2pctl shell`` with its stdin and stdout piped: type a line, wait for a line to appear."""

    def __init__(self, peer):
        import queue
        import threading

        self.peer = peer
        self.lines = queue.Queue()
        self.seen = []
        self.proc = subprocess.Popen([P2PCTL, "--data-dir", peer.data_dir, "shell"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def type(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def expect(self, text, timeout=15):
        import queue
        import time

        deadline = time.monotonic() + timeout
        while True:
            for line in self.seen:
                if text in line:
                    self.seen.remove(line)
                    return line
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError("%s's shell never showed %r; it showed %r" % (self.peer.name, text, self.seen))
            if line is None:
                raise AssertionError("%s's shell ended before showing %r (%r)" % (self.peer.name, text, self.seen))
            self.seen.append(line)

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)


def test_the_seed_figure_1_session(trio):
    """The three users of the seed's figure 1, each in a shell, in the order the figure shows."""
    jim, george, michael = trio
    shells = {p.name: ShellProcess(p) for p in (jim, george, michael)}
    j, g, m = shells["jim"], shells["george"], shells["michael"]
    try:
        for name, shell in shells.items():
            shell.expect("Hello %s! You joined the room 'General'." % name)
        m.type("create Seed1")
        m.expect("New group chat 'Seed1' created successfully!")
        m.type("join Seed1")
        m.expect("You have joined group chat 'Seed1'.")
        j.type("join Seed1")
        j.expect("You have joined group chat 'Seed1'.")
        m.expect("jim has joined group chat 'Seed1'.")
        g.type("users")
        g.expect("online users:")
        for name in ("george", "jim", "michael"):
            g.expect(name)
        g.type("private michael Could you help me join a group chat?")
        m.expect("Private message from george: Could you help me join a group chat?")
        m.type("private george sure")
        g.expect("Private message from michael: sure")
        j.type("public Seed1 Hey Michael, What's up?")
        m.expect("In group Seed1, jim: Hey Michael, What's up?")
        m.type("public Seed1 Not much!")
        j.expect("In group Seed1, michael: Not much!")
        g.type("groups")
        g.expect("available groups:")
        g.expect("Seed1")
        g.type("join Seed1")
        g.expect("You have joined group chat 'Seed1'.")
        j.expect("george has joined group chat 'Seed1'.")
        m.expect("george has joined group chat 'Seed1'.")
        j.type("leave Seed1")
        j.expect("You have left group chat 'Seed1'.")
        g.expect("jim has left group chat 'Seed1'.")
        m.expect("jim has left group chat 'Seed1'.")
        j.type("exit")
        assert j.proc.wait(10) == 0
        assert jim.ctl("status")["registry"]["state"] == "online"  # the daemon keeps running
        m.type("public Seed1 jim is gone")
        g.expect("In group Seed1, michael: jim is gone")
        assert ("michael", "jim is gone") not in room_history(jim, "Seed1")
        assert room_history(jim, "Seed1") == [("jim", "Hey Michael, What's up?"), ("michael", "Not much!")]
    finally:
        for shell in shells.values():
            shell.close()


def test_a_new_peer_is_announced_in_general(trio, tmp_path):
    jim = trio[0]
    shell = ShellProcess(jim)
    try:
        shell.expect("Hello jim!")
        fred = PeerProcess(str(tmp_path / "fred"), "fred", jim.registry_url)
        with fred:
            shell.expect("fred joined the room 'General'")
        fred2 = PeerProcess(str(tmp_path / "fred"), "fred", jim.registry_url)
        with fred2:  # a restart is not a new member
            fred2.ctl("status")
        shell.type("users")
        shell.expect("online users:")
        assert not any("fred joined" in line for line in shell.seen)
    finally:
        shell.close()


def test_fan_out_survives_a_sender_killed_mid_way(trio):
    """Room messages stored before the sender is killed reach every member after it restarts (the outbox
    finishes the fan-out), each exactly once and in order."""
    jim, george, michael = trio
    assert p2pctl(michael, "create", "Crash").returncode == 0
    assert p2pctl(michael, "join", "Crash").returncode == 0
    for peer in (jim, george):
        assert p2pctl(peer, "join", "Crash").returncode == 0
    george.stop()  # unreachable for now: its copies stay in michael's outbox (or go to the mailbox)
    bodies = ["crash %d" % n for n in range(30)]
    for body in bodies:
        michael.ctl("public", room="Crash", text=body)
    michael.kill()
    michael.start()
    george.start()
    for member in (jim, george):
        wait_for(lambda m=member: len(room_history(m, "Crash")) == 30, "%s to get all 30" % member.name, 40)
        assert room_history(member, "Crash") == [("michael", b) for b in bodies]
    wait_for(lambda: michael.ctl("status")["outbox"] == 0, "michael's outbox to empty", 40)


def test_a_non_member_cannot_post_into_a_room(trio, tmp_path):
    """A peer that is not in a room gets its room messages acknowledged (so it stops resending) but nothing is
    stored or shown: the receiver checks the registry's member list before it keeps a room message."""
    import time

    from p2pd.core import wire
    from p2pd.peer import identity as identity_mod
    from tests.test_files_e2e import Link

    jim, george, michael = trio
    assert p2pctl(michael, "create", "Private1").returncode == 0
    assert p2pctl(michael, "join", "Private1").returncode == 0
    assert p2pctl(jim, "join", "Private1").returncode == 0
    mallory = PeerProcess(str(tmp_path / "mallory"), "mallory", jim.registry_url)
    with mallory:
        ident = identity_mod.load_or_create(mallory.data_dir, "mallory")
        link = Link(jim, ident, "mallory")
        try:
            forged = {"t": "msg", "id": os.urandom(16).hex(), "from": "mallory", "seq": 1,
                      "ts": int(time.time() * 1000), "body": "let me in", "room": "Private1"}
            link.send_frames(forged)
            link.wait(lambda f: f["t"] == "ack" and forged["id"] in wire.ack_ids(f), what="the ack")
            assert ("mallory", "let me in") not in room_history(jim, "Private1")
            michael.ctl("public", room="Private1", text="members only")
            wait_for(lambda: ("michael", "members only") in room_history(jim, "Private1"), "jim to get it")
            assert room_history(jim, "Private1") == [("michael", "members only")]
        finally:
            link.close()


def test_pipelined_room_posts_keep_their_order(trio):
    """Posts requested back to back on one control connection are stored and delivered in request order,
    whatever order the registry answers their member lookups in."""
    import socket

    jim, george, michael = trio
    assert p2pctl(george, "create", "Burst").returncode == 0
    for peer in trio:
        assert p2pctl(peer, "join", "Burst").returncode == 0
    bodies = ["burst %03d" % n for n in range(60)]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(george.control_path)
        s.sendall(b"".join(json.dumps({"id": n, "cmd": "public", "room": "Burst", "text": body}).encode() + b"\n"
                           for n, body in enumerate(bodies)))
        replies, buf = {}, b""
        while len(replies) < len(bodies):
            buf += s.recv(65536)
            *lines, buf = buf.split(b"\n")
            for line in lines:
                reply = json.loads(line)
                replies[reply["id"]] = reply
    assert all(r["ok"] for r in replies.values()), [r for r in replies.values() if not r["ok"]][:2]
    for member in (jim, michael):
        wait_for(lambda m=member: len(room_history(m, "Burst")) == 60, "%s to get the burst" % member.name)
        assert room_history(member, "Burst") == [("george", b) for b in bodies]
    assert room_history(george, "Burst") == [("george", b) for b in bodies]


def test_a_file_sent_to_a_room_is_offered_to_each_member_who_decides_for_itself(trio, tmp_path):
    """Issue 13: `p2pctl send G1 FILE` offers it to every other member, each with its own consent; the sender
    reads one line per member and exits with the first refusal's code (5)."""
    jim, george, michael = trio
    assert p2pctl(jim, "create", "Files1").returncode == 0
    for peer in trio:
        assert p2pctl(peer, "join", "Files1").returncode == 0
    note = tmp_path / "agenda.txt"
    note.write_text("1. rooms\n2. files\n")
    sending = subprocess.Popen([P2PCTL, "--data-dir", jim.data_dir, "send", "#Files1", str(note)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)

    def offer(peer):
        found = [t for t in peer.ctl("transfers") if t["direction"] == "in" and t["status"] == "offered"]
        return found[0] if found else None

    wait_for(lambda: offer(george) and offer(michael), "both members to be offered the file")
    george.ctl("accept", tid=offer(george)["tid"])
    michael.ctl("reject", tid=offer(michael)["tid"])
    out, err = sending.communicate(timeout=60)
    assert sending.returncode == 5, (out, err)
    lines = out.splitlines()
    assert lines[0] == "offering to 2 member(s) of Files1: george, michael", lines
    assert "george: sent, " in out and "michael: not sent: michael rejected the files" in out, out
    assert os.path.exists(os.path.join(george.data_dir, "inbox", "agenda.txt"))


def test_a_room_is_deleted_by_its_owner_only(trio):
    """Issue 12, finding 8: rooms have an owner, who may delete them; nobody else can, and General stays."""
    jim, george, michael = trio
    assert p2pctl(jim, "create", "Del1").returncode == 0
    assert p2pctl(george, "join", "Del1").returncode == 0
    out = p2pctl(george, "delete", "Del1")
    assert out.returncode == 1 and out.stderr == "p2pctl: only the owner of room Del1 may delete it\n", out.stderr
    out = p2pctl(jim, "delete", "del1")
    assert out.returncode == 0 and out.stdout.strip() == "deleted room del1", (out.stdout, out.stderr)
    assert "Del1" not in {r["name"] for r in jim.ctl("groups")}
    out = p2pctl(jim, "delete", "General")
    assert out.returncode != 0 and "General" in out.stderr
