"""The rules of the data stream (p2pd.peer.files.engine), with plain calls: what a sender sends next, what a
receiver accepts, resume offsets."""

import base64

import pytest

from p2pd.core import datastream, filehash
from p2pd.peer.files.engine import END, FINISH, OPEN, READ, ReceiveRules, SendPlan, check_have, part_resume
from p2pd.peer.files.errors import FileProblem, TransferError


def steps(plan, reads=None):
    """Every step of *plan*, each READ answered with all it asked for."""
    out = []
    while True:
        step = plan.next()
        out.append(step)
        if step[0] is READ:
            plan.read(step[2], "f")
        if step[0] is FINISH:
            return out


def test_a_plan_sends_every_file_in_order_in_chunks_then_finishes():
    plan = SendPlan([5, 0, 3], [0, 0, 0], chunk=2)
    assert steps(plan) == [(OPEN, 0, 0), (READ, 0, 2), (READ, 0, 2), (READ, 0, 1), (END, 0, 0),
                           (OPEN, 1, 0), (END, 1, 0),
                           (OPEN, 2, 0), (READ, 2, 2), (READ, 2, 1), (END, 2, 0), (FINISH, None, 0)]


def test_a_plan_resumes_each_file_at_its_verified_offset():
    plan = SendPlan([5, 4], [4, 4], chunk=8)
    assert steps(plan) == [(OPEN, 0, 4), (READ, 0, 1), (END, 0, 0), (OPEN, 1, 4), (END, 1, 0), (FINISH, None, 0)]


def test_a_plan_tracks_the_position_of_short_reads():
    plan = SendPlan([10], [0], chunk=8)
    plan.next()
    assert plan.next() == (READ, 0, 8)
    plan.read(3, "f")
    assert plan.position == 3 and plan.next() == (READ, 0, 7)


def test_a_file_that_gives_no_bytes_shrank():
    plan = SendPlan([10], [0])
    plan.next()
    plan.next()
    with pytest.raises(FileProblem) as info:
        plan.read(0, "f.bin")
    assert info.value.code == "file_changed" and "f.bin" in info.value.message


def test_nothing_follows_the_finish():
    plan = SendPlan([], [])
    assert plan.next() == (FINISH, None, 0)
    with pytest.raises(ValueError):
        plan.next()


DATA = b"abcdefgh" * 40


def item(data, path="f"):
    digests = b"".join(filehash.ChunkHasher(len(data)).update(data))
    return {"path": path, "size": len(data), "hash": filehash.root_of(digests)}, digests


def file_record(i, digests):
    return {"t": "file", "i": i, "d": base64.b64encode(digests).decode()}


def test_rules_take_a_file_its_bytes_and_its_end():
    it, digests = item(DATA)
    rules = ReceiveRules("bob", [it])
    assert rules.file(file_record(0, digests)) == (0, digests)
    rules.opened(0)
    rules.data(300)
    rules.data(20)
    assert rules.end(0) is True
    rules.finish(["f"])


def test_rules_refuse_files_out_of_order_and_a_file_started_twice():
    a, da = item(DATA)
    rules = ReceiveRules("bob", [a, a])
    with pytest.raises(datastream.StreamError):
        rules.file(file_record(1, da))
    rules.file(file_record(0, da))
    rules.opened(0)
    with pytest.raises(datastream.StreamError):
        rules.file(file_record(0, da))


@pytest.mark.parametrize("record", [{"t": "file", "i": 0, "d": "!!"}, {"t": "file", "i": "0", "d": ""},
                                    {"t": "file", "i": 5, "d": ""}])
def test_rules_refuse_malformed_file_records(record):
    it, _ = item(DATA)
    with pytest.raises(datastream.StreamError):
        ReceiveRules("bob", [it]).file(record)


def test_a_hash_list_that_is_not_the_offers_is_a_hash_mismatch():
    it, digests = item(DATA)
    with pytest.raises(TransferError) as info:
        ReceiveRules("bob", [it]).file(file_record(0, b"\0" * len(digests)))
    assert info.value.code == "hash_mismatch"


def test_bytes_outside_a_file_or_beyond_its_size_are_refused():
    it, digests = item(DATA)
    rules = ReceiveRules("bob", [it])
    with pytest.raises(TransferError) as outside:
        rules.data(1)
    assert outside.value.code == "bad_stream"
    rules.file(file_record(0, digests))
    rules.opened(300)
    rules.data(20)
    with pytest.raises(TransferError) as beyond:
        rules.data(1)
    assert beyond.value.code == "size_mismatch"


def test_an_early_end_is_a_size_mismatch_and_an_end_of_another_file_a_stream_error():
    it, digests = item(DATA)
    rules = ReceiveRules("bob", [it])
    rules.file(file_record(0, digests))
    rules.opened(0)
    rules.data(10)
    with pytest.raises(datastream.StreamError):
        rules.end(1)
    with pytest.raises(TransferError) as info:
        rules.end(0)
    assert info.value.code == "size_mismatch"


def test_the_end_of_a_file_that_landed_before_is_not_landed_again():
    it, digests = item(DATA)
    rules = ReceiveRules("bob", [it])
    rules.file(file_record(0, digests))  # saved in an earlier session: never opened
    assert rules.end(0) is False


@pytest.mark.parametrize("saved,opened", [([None], False), (["f"], True)])
def test_a_finish_before_every_file_landed_is_refused(saved, opened):
    it, digests = item(DATA)
    rules = ReceiveRules("bob", [it])
    if opened:
        rules.file(file_record(0, digests))
        rules.opened(0)
    with pytest.raises(TransferError) as info:
        rules.finish(saved)
    assert info.value.code == "size_mismatch"


def test_accept_offsets_are_one_per_item_and_within_its_size():
    items = [{"size": 10}, {"size": 0}]
    assert check_have([10, 0], items) and check_have([3, 0], items)
    assert not check_have([11, 0], items) and not check_have([0], items) and not check_have([0, 0, 0], items)


def test_a_part_resumes_at_the_journal_or_at_the_last_whole_chunk_of_a_short_file(monkeypatch):
    monkeypatch.setattr(filehash, "MIN_CHUNK", 64)
    size = 1000
    chunk = filehash.chunk_size(size)
    assert part_resume(size, 256, size) == 256  # whole length: the journal holds
    assert part_resume(600, 256, size) == 256  # longer than the journal: the journal holds
    assert part_resume(200, 256, size) == 200 // chunk * chunk  # shorter: whole chunks only
