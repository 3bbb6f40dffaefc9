"""A ReceiveSession fed sealed records by hand through a fake IByteStream, with a real Transfers on fakes of
its seams (a Clock, inline or real threads, fake data paths, a real Storage in tmp_path); and the seams."""

import os

import pytest

from tests.files_world import *  # noqa: F401,F403 (the fakes, helpers and fixtures of these tests)


# -- ReceiveSession -----------------------------------------------------------------------------------------------



def test_a_correct_stream_lands_every_file_and_answers_complete(world):
    daemon, manager = world
    files = [("pics/a.bin", A), ("pics/empty", b""), ("notes.txt", B)]
    t, outcome, link = offer(manager, files)
    keys, conn, transport, sealer, answer = accept(manager, t)
    assert answer["have"] == [0, 0, 0]
    stream = b"".join(file_records(sealer, i, data, pieces=[100, 700] if data else None)
                      for i, (_, data) in enumerate(files)) + sealer.finish()
    deliver(conn, stream)
    assert inbox_files(manager) == ["notes.txt", "pics/a.bin", "pics/empty"]
    for path, data in files:
        with open(os.path.join(manager.inbox.path, path), "rb") as f:
            assert f.read() == data
    assert partials(manager) == []
    saved = ["pics/a.bin", "pics/empty", "notes.txt"]
    assert replies(keys, transport) == [{"t": "complete", "saved": saved}]
    assert transport.disconnecting and not transport.aborted
    assert len(outcome) == 1 and outcome[0]["saved"] == saved and outcome[0]["done"] == len(A) + len(B)
    assert t.record["status"] == "done" and t.have == [len(A), 0, len(B)]
    assert daemon.storage.get_transfer(t.tid)["status"] == "done"
    assert manager.live == {} and manager.paths.waiting == {}
    assert_quiet(daemon.clock)


def test_files_land_beside_existing_names_without_replacing_them(world):
    daemon, manager = world
    os.makedirs(os.path.join(manager.inbox.path, "pics"))
    with open(os.path.join(manager.inbox.path, "notes.txt"), "wb") as f:
        f.write(b"mine")
    t, outcome, _ = offer(manager, [("pics/a.bin", A), ("notes.txt", B)])
    keys, conn, transport, sealer, _ = accept(manager, t)
    assert t.record["tops"] == {"pics": "pics (1)", "notes.txt": "notes (1).txt"}
    deliver(conn, file_records(sealer, 0, A) + file_records(sealer, 1, B) + sealer.finish())
    assert replies(keys, transport) == [{"t": "complete", "saved": ["pics (1)/a.bin", "notes (1).txt"]}]
    with open(os.path.join(manager.inbox.path, "notes.txt"), "rb") as f:
        assert f.read() == b"mine"
    assert os.listdir(os.path.join(manager.inbox.path, "pics")) == []


def assert_quiet(clock):
    """Nothing is left scheduled but the limit on a graceful close of the data connection (cancelled when the
    connection is gone; these tests' transport never says it is)."""
    assert [call.func.__self__.action.__name__ for call in clock.getDelayedCalls()] in ([], ["_close_timed_out"])


def test_a_graceful_close_that_never_completes_is_aborted(world):
    """A receiver closes after 'complete'; if the sender never lets the connection go (it stops reading, so
    what is queued is never sent), the connection is aborted after DATA_TIMEOUT. Once it is gone, nothing is
    left scheduled."""
    daemon, manager = world
    t, outcome, keys, conn, transport, sealer = receive_one(manager, A)
    deliver(conn, file_records(sealer, 0, A, digests=digests_of(A)) + sealer.finish())
    assert transport.disconnecting and not transport.aborted
    daemon.clock.advance(DATA_TIMEOUT)
    assert transport.aborted
    conn.connectionLost(Failure(Exception("aborted")))
    assert daemon.clock.getDelayedCalls() == []


def test_a_closed_connection_cancels_the_close_limit(world):
    daemon, manager = world
    t, outcome, keys, conn, transport, sealer = receive_one(manager, A)
    deliver(conn, file_records(sealer, 0, A, digests=digests_of(A)) + sealer.finish())
    conn.connectionLost(Failure(Exception("closed")))
    assert daemon.clock.getDelayedCalls() == [] and not transport.aborted


def assert_failed_cleanly(manager, t, outcome, keys, transport, code, status="failed"):
    """The transfer failed with *code*: the sender was told, the connection closed, no partial file is left and
    nothing landed."""
    failed_with(outcome, code)
    fail = replies(keys, transport)
    assert len(fail) == 1 and fail[0]["t"] == "fail" and fail[0]["code"] == code
    assert transport.disconnecting
    assert t.record["status"] == status and t.record["error"]["code"] == code
    assert inbox_files(manager) == []
    assert manager.live == {}
    assert_quiet(t.manager.clock)
    assert_buffers_back(manager)


def assert_buffers_back(manager):
    """Every decrypted-data buffer the daemon-wide pool made is back in it (a record dropped on a failure too)."""
    assert manager.buffers._free.qsize() == manager.buffers.made


@pytest.mark.parametrize("pieces", [[], [1000], [600], [999]])
def test_more_bytes_than_declared_is_a_size_mismatch(world, pieces):
    """Declared 1000 bytes, sent 1001 (in one record or after the declared ones): nothing is kept."""
    daemon, manager = world
    t, outcome, keys, conn, transport, sealer = receive_one(manager, A)
    deliver(conn, file_records(sealer, 0, A + b"!", pieces=pieces, digests=digests_of(A)) + sealer.finish())
    assert_failed_cleanly(manager, t, outcome, keys, transport, "size_mismatch")
    assert partials(manager) == []
    assert t.have == [0]


def test_a_flipped_byte_is_a_hash_mismatch(world):
    daemon, manager = world
    t, outcome, keys, conn, transport, sealer = receive_one(manager, A)
    bad = bytearray(A)
    bad[500] ^= 0x01
    deliver(conn, file_records(sealer, 0, bytes(bad), digests=digests_of(A)) + sealer.finish())
    assert_failed_cleanly(manager, t, outcome, keys, transport, "hash_mismatch")
    assert partials(manager) == []


def test_a_bad_chunk_is_caught_when_it_completes(world, small_chunks):
    """With several chunks, the lie is caught as soon as the bad chunk is whole, before the rest arrives."""
    daemon, manager = world
    t, outcome, keys, conn, transport, sealer = receive_one(manager, A)
    bad = bytearray(A)
    bad[3 * 64 + 10] ^= 0xFF
    stream = file_records(sealer, 0, bytes(bad), pieces=list(range(32, 1000, 32)), digests=digests_of(A))
    head = len(file_records(datastream.Sealer(keys.to_receiver), 0, A[:4 * 64], pieces=list(range(32, 256, 32)),
                            digests=digests_of(A), end=False))
    conn.dataReceived(stream[:head - 1])
    assert outcome == [] and t.have == [3 * 64]  # three chunks verified, the fourth not yet whole
    conn.dataReceived(stream[head - 1:head])
    assert_failed_cleanly(manager, t, outcome, keys, transport, "hash_mismatch")
    assert partials(manager) == []


@pytest.mark.parametrize("digests", [
    digests_of(B),  # another file's list
    digests_of(A) + b"\0" * 32,  # one digest too many
    b"",
])
def test_a_hash_list_that_does_not_match_the_offer_is_a_hash_mismatch(world, digests):
    daemon, manager = world
    t, outcome, keys, conn, transport, sealer = receive_one(manager, A)
    deliver(conn, file_records(sealer, 0, A, digests=digests) + sealer.finish())
    assert_failed_cleanly(manager, t, outcome, keys, transport, "hash_mismatch")
    assert partials(manager) == []


def test_end_before_every_byte_is_a_size_mismatch(world):
    daemon, manager = world
    t, outcome, keys, conn, transport, sealer = receive_one(manager, A)
    deliver(conn, file_records(sealer, 0, A[:500], digests=digests_of(A)) + sealer.finish())
    assert_failed_cleanly(manager, t, outcome, keys, transport, "size_mismatch")
    assert partials(manager) == []


def test_finish_before_every_file_is_an_error(world):
    daemon, manager = world
    t, outcome, _ = offer(manager, [("a.bin", A), ("b.bin", B)])
    keys, conn, transport, sealer, _ = accept(manager, t)
    deliver(conn, file_records(sealer, 0, A) + sealer.finish())
    failed_with(outcome, "size_mismatch")
    assert replies(keys, transport)[-1]["t"] == "fail" and transport.disconnecting
    assert t.record["status"] in ("failed", "interrupted") and t.record["error"]["code"] == "size_mismatch"
    assert inbox_files(manager) == ["a.bin"] and partials(manager) == []
    assert manager.live == {}
    assert_quiet(daemon.clock)


def test_finish_in_the_middle_of_a_file_is_an_error(world):
    daemon, manager = world
    t, outcome, keys, conn, transport, sealer = receive_one(manager, A)
    deliver(conn, file_records(sealer, 0, A[:10], digests=digests_of(A), end=False) + sealer.finish())
    failed_with(outcome, "size_mismatch")
    assert replies(keys, transport)[-1]["t"] == "fail" and transport.disconnecting
    assert t.record["status"] in ("failed", "interrupted") and t.record["error"]["code"] == "size_mismatch"
    assert inbox_files(manager) == [] and manager.live == {}
    assert_quiet(daemon.clock)
    if t.record["status"] == "failed":  # not resumable: nothing may stay behind
        assert partials(manager) == []


def test_files_out_of_order_are_a_stream_error(world):
    """File 1's records before file 0's: refused before anything is written (resumable: it was the stream)."""
    daemon, manager = world
    t, outcome, _ = offer(manager, [("a.bin", A), ("b.bin", B)])
    keys, conn, transport, sealer, _ = accept(manager, t)
    deliver(conn, file_records(sealer, 1, B) + file_records(sealer, 0, A) + sealer.finish())
    assert_failed_cleanly(manager, t, outcome, keys, transport, "bad_stream", status="interrupted")
    assert partials(manager) == []


@pytest.mark.parametrize("make", [
    lambda s: s.seal(datastream.DATA, b"x"),  # data before any file
    lambda s: s.end(0),  # the end of a file never started
    lambda s: s.json({"t": "file", "i": 0, "d": "!!"}),  # a hash list that is not base64
    lambda s: s.json({"t": "file", "i": "0", "d": ""}),
    lambda s: s.json({"t": "file", "i": 5, "d": ""}),
    lambda s: s.json({"t": "hello"}),
    lambda s: s.finish() + s.finish(),
    lambda s: b"\0\0\0\x20Dgarbage that does not authenticate!",
])
def test_malformed_streams_fail_without_landing(world, make):
    daemon, manager = world
    t, outcome, keys, conn, transport, sealer = receive_one(manager, A)
    deliver(conn, make(sealer))
    assert len(outcome) == 1 and isinstance(outcome[0], Failure)
    assert outcome[0].value.code in ("bad_stream", "bad_record", "size_mismatch")
    assert inbox_files(manager) == [] and partials(manager) == []
    assert replies(keys, transport)[-1]["t"] == "fail"
    assert_buffers_back(manager)


def test_a_file_started_twice_is_a_stream_error(world):
    daemon, manager = world
    t, outcome, keys, conn, transport, sealer = receive_one(manager, A)
    deliver(conn, file_records(sealer, 0, A[:10], digests=digests_of(A), end=False)
            + file_records(sealer, 0, A, digests=digests_of(A)))
    failed_with(outcome, "bad_stream")
    assert inbox_files(manager) == []


def test_the_sender_can_stop_the_transfer(world):
    daemon, manager = world
    t, outcome, keys, conn, transport, sealer = receive_one(manager, A)
    deliver(conn, file_records(sealer, 0, A[:10], digests=digests_of(A), end=False)
            + sealer.json({"t": "fail", "code": "file_changed", "message": "it changed"}))
    error = failed_with(outcome, "file_changed")
    assert "it changed" in error.message
    assert partials(manager) == [] and inbox_files(manager) == []


def test_silence_on_the_data_connection_interrupts_and_keeps_the_verified_part(world, small_chunks):
    daemon, manager = world
    t, outcome, keys, conn, transport, sealer = receive_one(manager, A)
    conn.dataReceived(file_records(sealer, 0, A[:200], digests=digests_of(A), end=False))
    assert t.have == [192]
    daemon.clock.advance(DATA_TIMEOUT - 1)
    assert outcome == []
    daemon.clock.advance(1)
    failed_with(outcome, "interrupted")
    assert transport.aborted and t.record["status"] == "interrupted"
    assert partials(manager) == [t.part_name(0)]
    assert daemon.storage.get_transfer(t.tid)["have"] == [192]


def test_no_data_connection_in_time_interrupts(world):
    daemon, manager = world
    t, outcome, _ = offer(manager, [("a.bin", A)])
    manager.accept(t.tid)
    assert len(manager.paths.waiting) == 1
    daemon.clock.advance(DATA_TIMEOUT)
    failed_with(outcome, "interrupted")
    assert manager.paths.waiting == {} and manager.live == {}


def test_an_interrupted_transfer_resumes_from_the_verified_length(world, small_chunks):
    """The same offer again (another tid) is accepted by itself, with the verified length as ``have``; the
    sender sends only the rest, and the file lands whole."""
    daemon, manager = world
    t = interrupted_after(manager, A, 300)
    assert t.have == [256] and partials(manager) == [t.part_name(0)]
    assert daemon.storage.get_transfer(t.tid)["have"] == [256]

    again, outcome, keys, conn, transport, sealer, answer = offer_again(manager, A, tid_of(77))
    assert answer["have"] == [256]
    assert again.record["key"] == t.record["key"]
    records = [sealer.json({"t": "file", "i": 0, "d": base64.b64encode(digests_of(A)).decode()}),
               b"".join(sealer.data(A[256:])), sealer.end(0), sealer.finish()]
    conn.dataReceived(b"".join(records))
    assert replies(keys, transport) == [{"t": "complete", "saved": ["dir/f.bin"]}]
    assert outcome[0]["resumed_from"] == 256
    with open(os.path.join(manager.inbox.path, "dir", "f.bin"), "rb") as f:
        assert f.read() == A
    assert partials(manager) == []
    assert daemon.storage.get_transfer(t.tid)["status"] == "replaced"


def interrupted_after(manager, data, received):
    """Receive the first *received* bytes of *data* as dir/f.bin, then lose the connection: the Incoming."""
    t, outcome, keys, conn, transport, sealer = receive_one(manager, data)
    conn.dataReceived(file_records(sealer, 0, data[:received], digests=digests_of(data), end=False))
    conn.connectionLost(Failure(Exception("gone")))
    failed_with(outcome, "interrupted")
    return t


def offer_again(manager, data, tid):
    """The same offer under a new tid (accepted by itself, as a resume): ``(t, keys, conn, transport, sealer,
    answer)``."""
    link = FakeLink()
    manager.frame(link, wire.decode(wire.encode({"t": "offer", "tid": tid, "items": [item("dir/f.bin", data)]})))
    answer = link.sent[-1]
    assert answer["t"] == "accept" and answer["tid"] == tid
    t = manager.live[tid]
    outcome = []  # after accept, which swallows failures of offers nobody waits on: a failure shows as None
    t.result.addCallback(outcome.append)
    keys = datastream.SessionKeys(base64.urlsafe_b64decode(answer["secret"] + "="))
    conn = FakeStream(manager.paths.claim(keys.sid)).start()
    transport = conn.transport
    return t, outcome, keys, conn, transport, datastream.Sealer(keys.to_receiver), answer


def test_a_bad_hash_list_on_resume_removes_the_partial_file(world, small_chunks):
    """The second session of a transfer gets a hash list that does not match the offer: the transfer fails
    (hash_mismatch, not resumable) and its partial file, now useless, is removed."""
    daemon, manager = world
    first = interrupted_after(manager, A, 300)
    assert partials(manager) == [first.part_name(0)]
    t, outcome, keys, conn, transport, sealer, answer = offer_again(manager, A, tid_of(78))
    assert answer["have"] == [256]
    conn.dataReceived(file_records(sealer, 0, A, digests=digests_of(B)))
    assert outcome == [None] and manager.live == {}
    assert t.record["status"] == "failed" and t.record["error"]["code"] == "hash_mismatch"
    assert partials(manager) == []


# -- stopping a receive session --------------------------------------------------------------------------------------

def fds_open_to(path):
    """The file descriptors of this process open on *path* (Linux /proc)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink("/proc/self/fd/" + fd) == path:
                found.append(int(fd))
        except OSError:
            pass
    return found


def half_received(manager, keys_too=False):
    t, outcome, keys, conn, transport, sealer = receive_one(manager, A)
    conn.dataReceived(file_records(sealer, 0, A[:300], digests=digests_of(A), end=False))
    part = os.path.join(manager.inbox.path, PARTIAL_DIR, t.part_name(0))
    assert len(fds_open_to(part)) == 1
    return (t, outcome, conn, part, keys) if keys_too else (t, outcome, conn, part)


def receiver_cancels(manager, t):
    manager.cancel(t.tid)


def sender_cancels(manager, t):
    manager.frame(t.link, {"t": "cancel", "tid": t.tid, "code": "cancelled", "message": "stop"})


def daemon_stops(manager, t):
    manager.stop()


@pytest.mark.parametrize("stop", [receiver_cancels, sender_cancels, daemon_stops])
def test_stopping_a_receive_session_closes_the_partial_file(world, stop):
    """However a running receive ends (cancel on either side, daemon stop), the partial file is closed once the
    connection is gone, and the transfer is over."""
    daemon, manager = world
    t, outcome, conn, part, keys = half_received(manager, keys_too=True)
    stop(manager, t)
    if stop is receiver_cancels:  # the sender is told on the data stream, then it closes behind that
        assert conn.transport.disconnecting
        assert replies(keys, conn.transport)[-1] == {"t": "fail", "code": "cancelled",
                                                     "message": "sending again asks them to accept it again"}
    else:
        assert conn.transport.aborted
    conn.connectionLost(Failure(Exception("aborted")))
    assert len(outcome) == 1 and isinstance(outcome[0], Failure)
    assert manager.live == {}
    assert fds_open_to(part) == []


def test_a_lost_connection_closes_the_partial_file(world):
    daemon, manager = world
    t, outcome, conn, part = half_received(manager)
    conn.connectionLost(Failure(Exception("gone")))
    failed_with(outcome, "interrupted")
    assert fds_open_to(part) == []


def test_a_finished_session_lets_go_of_its_buffers(world):
    """Finished transfers stay in the listing, and a session's receive buffer (two records) goes with the
    connection: 200 listed transfers must not keep 200 of them."""
    daemon, manager = world
    t, outcome, conn, part = half_received(manager)
    assert len(conn.session.opener._buf) >= datastream.STANDARD
    conn.connectionLost(Failure(Exception("gone")))
    assert len(conn.session.opener._buf) == 0


class ThreadedClock(Clock):
    """A Clock with the two methods that make a DiskWriter use its thread; callFromThread queues the call for
    :meth:`pump` to run in the test's thread (the reactor thread)."""

    def __init__(self):
        super().__init__()
        import queue

        self.from_thread = queue.SimpleQueue()

    def callFromThread(self, f, *args):
        self.from_thread.put((f, args))

    def getThreadPool(self):
        raise AssertionError("not used by receiving")

    def pump(self, until, timeout=10.0):
        import queue
        import time

        deadline = time.monotonic() + timeout
        while not until():
            try:
                f, args = self.from_thread.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError("timed out waiting for the writer thread") from None
            f(*args)


@pytest.fixture
def threaded(tmp_path):
    daemon = FakeDaemon(tmp_path)
    daemon.clock = ThreadedClock()
    manager = make_transfers(daemon, str(tmp_path / "inbox"), threads=ReactorThreads(daemon.clock))
    yield daemon, manager
    daemon.storage.close()


def test_the_threaded_writer_lands_files_and_applies_back_pressure(threaded, small_chunks, monkeypatch):
    """With a reactor that has threads, the writer thread writes and verifies; past HIGH queued bytes the
    transport is paused, and resumed once the writer is below LOW. The files land as with the inline writer."""
    daemon, manager = threaded
    monkeypatch.setattr(dmod.DiskWriter, "HIGH", 200)
    monkeypatch.setattr(dmod.DiskWriter, "LOW", 100)
    data = os.urandom(5000)
    t, outcome, _ = offer(manager, [("big.bin", data), ("b.bin", B)])
    keys, conn, transport, sealer, _ = accept(manager, t)
    states = []
    real_pause, real_resume = transport.pauseReceiving, transport.resumeReceiving
    monkeypatch.setattr(transport, "pauseReceiving", lambda: (states.append("pause"), real_pause()))
    monkeypatch.setattr(transport, "resumeReceiving", lambda: (states.append("resume"), real_resume()))
    gate = threading.Event()  # holds the writer until everything is queued: the pause is then certain
    real_data = dmod.DiskWriter._data
    monkeypatch.setattr(dmod.DiskWriter, "_data", lambda self, chunk: (gate.wait(10), real_data(self, chunk)))
    conn.dataReceived(file_records(sealer, 0, data, pieces=list(range(100, 5000, 100)))
                      + file_records(sealer, 1, B) + sealer.finish())
    assert states == ["pause"] and outcome == []
    gate.set()
    daemon.clock.pump(lambda: outcome)
    assert not isinstance(outcome[0], Failure), outcome[0]
    assert outcome[0]["saved"] == ["big.bin", "b.bin"]
    assert read(os.path.join(manager.inbox.path, "big.bin")) == data
    assert read(os.path.join(manager.inbox.path, "b.bin")) == B
    assert replies(keys, transport) == [{"t": "complete", "saved": ["big.bin", "b.bin"]}]
    assert states == ["pause", "resume"]
    session = t.session
    session.writer.thread.join(5)
    assert not session.writer.thread.is_alive()


def test_the_threaded_writer_reports_a_bad_chunk(threaded, small_chunks):
    daemon, manager = threaded
    t, outcome, keys, conn, transport, sealer = receive_one(manager, A)
    bad = bytearray(A)
    bad[700] ^= 0x10
    conn.dataReceived(file_records(sealer, 0, bytes(bad), pieces=[300, 600], digests=digests_of(A))
                      + sealer.finish())
    daemon.clock.pump(lambda: outcome)
    failed_with(outcome, "hash_mismatch")
    assert replies(keys, transport)[-1]["code"] == "hash_mismatch"
    assert partials(manager) == [] and inbox_files(manager) == []
    t.session.writer.thread.join(5)
    assert not t.session.writer.thread.is_alive()


# -- the seams -----------------------------------------------------------------------------------------------------

def test_transfers_is_a_frame_handler_and_its_sessions_are_stream_receivers(world):
    daemon, manager = world
    assert verifyObject(IFrameHandler, manager)
    assert manager.kinds == {"offer", "accept", "reject", "cancel", "ls", "listing", "get"}
    t, outcome, _ = offer(manager, [("a.bin", A)])
    keys, conn, transport, sealer, _ = accept(manager, t)
    assert verifyObject(IStreamReceiver, t.session) and verifyObject(IByteStream, conn)


def test_building_transfers_touches_no_file_and_start_makes_the_inbox(tmp_path):
    daemon = FakeDaemon(tmp_path)
    daemon.storage.put_transfer({"tid": "t1", "direction": "in", "peer": "bob", "status": "active",
                                 "fingerprint": "f", "items": [], "total": 0, "created": 1}, 1)
    manager = Transfers(daemon.name, daemon.storage, daemon.clock, InlineThreads(), daemon, daemon, daemon,
                        FakePaths(), str(tmp_path / "inbox"))
    assert not os.path.exists(tmp_path / "inbox")
    assert daemon.storage.get_transfer("t1")["status"] == "active"
    manager.start()
    assert os.path.isdir(tmp_path / "inbox")
    assert daemon.storage.get_transfer("t1")["status"] == "interrupted"
    daemon.storage.close()


def test_an_impossible_status_change_raises(world):
    """Every status change goes through the transfer's state machine: completing an offer nobody accepted
    is a BadTransition a test can see, and the status stays what it was."""
    daemon, manager = world
    t, outcome, _ = offer(manager, [("a.bin", A)])
    with pytest.raises(BadTransition):
        t.move("complete")
    assert t.record["status"] == "offered"


def test_cancelling_the_deferred_of_a_send_cancels_the_transfer(world, tmp_path):
    """What the control socket does when its client goes away: the Deferred of ``send`` cancels the transfer
    (the peer is told, the outcome is 'cancelled')."""
    daemon, manager = world
    path = tmp_path / "f.txt"
    path.write_bytes(b"hello")
    link = FakeLink(outgoing=True)
    d = manager.send("bob", [str(path)], link=link)
    (t,) = manager.live.values()
    failures = []
    d.addErrback(failures.append)
    d.cancel()
    assert len(failures) == 1 and failures[0].value.code == "cancelled"  # the transfer's own outcome
    assert link.sent[-1]["t"] == "cancel" and link.sent[-1]["tid"] == t.tid
    assert t.record["status"] == "cancelled" and t.record["error"]["code"] == "cancelled" and manager.live == {}


def test_an_offer_the_receiver_cancels_before_answering_ends_cancelled(world, tmp_path):
    """The receiver's ``cancel`` of an offer it has not answered ends the sender's transfer as cancelled (it was
    recorded as failed), with the receiver's words."""
    daemon, manager = world
    path = tmp_path / "f.txt"
    path.write_bytes(b"hello")
    link = FakeLink(outgoing=True)
    d = manager.send("bob", [str(path)], link=link)
    (t,) = manager.live.values()
    failures = []
    d.addErrback(failures.append)
    manager.frame(link, {"t": "cancel", "tid": t.tid, "code": "cancelled", "message": "receiver cancelled"})
    assert len(failures) == 1 and failures[0].value.code == "cancelled"
    assert "bob cancelled the transfer: receiver cancelled" in failures[0].value.message
    assert t.record["status"] == "cancelled" and manager.live == {}


def test_cancelling_the_deferred_of_a_get_cancels_the_offered_transfer(world):
    daemon, manager = world
    link = FakeLink()
    daemon.dial = lambda peer: defer.succeed(link)
    d = manager.get("bob", "a.bin")
    ask = link.sent[-1]
    assert ask["t"] == "get"
    frame = {"t": "offer", "tid": tid_of(5), "rid": ask["rid"], "items": [item("a.bin", A)]}
    manager.frame(link, wire.decode(wire.encode(frame)))
    t = manager.live[tid_of(5)]
    d.addErrback(lambda f: None)
    d.cancel()
    assert t.record["status"] == "interrupted" and t.record["error"]["code"] == "cancelled"
    assert link.sent[-1]["t"] == "cancel"


def test_an_accepted_session_waits_on_the_data_paths_once(world):
    daemon, manager = world
    t, outcome, _ = offer(manager, [("a.bin", A)])
    manager.accept(t.tid)
    (sid, session), = manager.paths.waiting.items()
    assert manager.paths.claim(b"x" * 16) is None
    assert manager.paths.claim(sid) is session and manager.paths.claim(sid) is None
    assert session.timer.active  # the session's own timer bounds the wait (and starts again with the stream)
    assert isinstance(t, Incoming)
