"""The chunk hash list of offered files (p2pd.core.filehash): chunk sizes at the boundaries, ChunkHasher against
hashing each chunk directly (any split, resumed at a boundary), and hash_file against both."""

import hashlib
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pd.core import filehash
from p2pd.core.filehash import MAX_CHUNKS, ChunkHasher, chunk_count, chunk_size, hash_file, root_of

MiB = 1 << 20
SMALL = 16  # a MIN_CHUNK that makes multi-chunk files a few bytes long


def H(data):
    """The digest of *data* under the algorithm the module uses (BLAKE3, or SHA-256 in older trees), computed
    here independently of the module's chunking."""
    if hasattr(filehash, "blake3"):
        from blake3 import blake3

        return blake3(data).digest()
    return hashlib.sha256(data).digest()


def direct(data, chunk):
    """The digests of *data* cut into *chunk*-byte pieces, hashed one by one."""
    return [H(data[i:i + chunk]) for i in range(0, len(data), chunk)]


def content(n):
    return bytes((i * 7 + i // 251) & 0xFF for i in range(n))


@pytest.mark.parametrize("size, chunk, count", [
    (0, 4 * MiB, 0),
    (1, 4 * MiB, 1),
    (4 * MiB - 1, 4 * MiB, 1),
    (4 * MiB, 4 * MiB, 1),
    (4 * MiB + 1, 4 * MiB, 2),
    (4 * MiB * MAX_CHUNKS, 4 * MiB, MAX_CHUNKS),
    (4 * MiB * MAX_CHUNKS + 1, 8 * MiB, MAX_CHUNKS // 2 + 1),
    (8 * MiB * MAX_CHUNKS, 8 * MiB, MAX_CHUNKS),
    (8 * MiB * MAX_CHUNKS + 1, 16 * MiB, MAX_CHUNKS // 2 + 1),
    (1 << 50, (1 << 50) // MAX_CHUNKS, MAX_CHUNKS),
])
def test_chunk_size_and_count_at_the_boundaries(size, chunk, count):
    assert chunk_size(size) == chunk
    assert chunk_count(size) == count


@given(st.integers(min_value=0, max_value=1 << 62))
def test_any_size_has_at_most_max_chunks_that_cover_it(size):
    """Chunks are a power-of-two multiple of 4 MiB, as small as MAX_CHUNKS allows, and exactly cover the size."""
    chunk, count = chunk_size(size), chunk_count(size)
    assert chunk % filehash.MIN_CHUNK == 0 and (chunk // filehash.MIN_CHUNK).bit_count() == 1
    assert count <= MAX_CHUNKS
    assert count * chunk >= size and (count == 0 or (count - 1) * chunk < size)
    if chunk > filehash.MIN_CHUNK:
        assert size > (chunk // 2) * MAX_CHUNKS  # half the chunk would have needed too many


def test_min_chunk_is_read_at_call_time(monkeypatch):
    """The tests below shrink MIN_CHUNK; this checks that every function sees the patched value."""
    monkeypatch.setattr(filehash, "MIN_CHUNK", SMALL)
    assert chunk_size(100) == SMALL and chunk_count(100) == 7
    assert ChunkHasher(100).chunk == SMALL


def test_root_of_the_empty_list_is_the_hash_of_nothing():
    assert root_of(b"") == H(b"").hex()
    assert root_of(b"\x01" * 64) == H(b"\x01" * 64).hex()
    assert root_of(b"\x01" * 64) != root_of(b"\x01" * 63 + b"\x02")


@given(st.binary(max_size=200), st.data())
def test_chunk_hasher_at_any_split_equals_direct_hashing(data, draw):
    """However the bytes are cut into updates, the digests that come out are those of each chunk, in order, each
    returned by the update that completed its chunk."""
    with mock.patch.object(filehash, "MIN_CHUNK", SMALL):
        hasher = ChunkHasher(len(data))
        cuts = sorted(draw.draw(st.lists(st.integers(0, len(data)), max_size=12)))
        bounds = [0] + cuts + [len(data)]
        ends = set(range(SMALL, len(data) + 1, SMALL)) | ({len(data)} if data else set())
        out = []
        for a, b in zip(bounds, bounds[1:]):
            got = hasher.update(data[a:b])
            assert len(got) == len([e for e in ends if a < e <= b])
            out.extend(got)
            assert hasher.position == b
        assert out == direct(data, SMALL)
        assert hasher.wanted() == 0 and hasher.position == len(data)


def test_chunk_hasher_one_byte_at_a_time():
    with mock.patch.object(filehash, "MIN_CHUNK", SMALL):
        data = content(50)
        hasher = ChunkHasher(50)
        finished_at = []
        for i in range(50):
            if hasher.update(data[i:i + 1]):
                finished_at.append(i + 1)
        assert finished_at == [16, 32, 48, 50]


def test_chunk_hasher_index_and_wanted_track_the_current_chunk():
    with mock.patch.object(filehash, "MIN_CHUNK", SMALL):
        hasher = ChunkHasher(40)
        assert (hasher.index, hasher.wanted()) == (0, 16)
        assert hasher.update(b"x" * 10) == []
        assert (hasher.index, hasher.wanted()) == (0, 6)
        assert len(hasher.update(b"x" * 6)) == 1
        assert (hasher.index, hasher.wanted()) == (1, 16)
        assert len(hasher.update(b"x" * 20)) == 1
        assert (hasher.index, hasher.wanted()) == (2, 4)  # the last chunk is short
        assert len(hasher.update(b"x" * 4)) == 1
        assert hasher.wanted() == 0


@given(st.integers(0, 120), st.data())
def test_resuming_at_a_chunk_boundary_gives_the_remaining_digests(size, draw):
    """A ChunkHasher started at a boundary (or at the very end) returns the digests from there on."""
    with mock.patch.object(filehash, "MIN_CHUNK", SMALL):
        data = content(size)
        boundaries = list(range(0, size, SMALL)) + [size]
        offset = draw.draw(st.sampled_from(boundaries))
        hasher = ChunkHasher(size, offset)
        assert hasher.position == offset
        remaining = direct(data, SMALL)[offset // SMALL:] if offset < size else []
        assert hasher.update(data[offset:]) == remaining
        with pytest.raises(ValueError):
            hasher.update(b"x")


@pytest.mark.parametrize("size, offset", [(100, 1), (100, 15), (100, 17), (100, 99), (100, 101), (16, 8)])
def test_resuming_off_a_boundary_is_a_value_error(size, offset):
    with mock.patch.object(filehash, "MIN_CHUNK", SMALL):
        with pytest.raises(ValueError):
            ChunkHasher(size, offset)


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 100])
def test_more_bytes_than_the_size_is_a_value_error(size):
    """The byte past the declared size is refused, whether it comes alone or with the last chunk."""
    with mock.patch.object(filehash, "MIN_CHUNK", SMALL):
        hasher = ChunkHasher(size)
        assert len(hasher.update(b"a" * size)) == chunk_count(size)
        with pytest.raises(ValueError):
            hasher.update(b"b")
        with pytest.raises(ValueError):
            ChunkHasher(size).update(b"a" * (size + 1))


def test_resumed_at_the_end_refuses_more():
    with mock.patch.object(filehash, "MIN_CHUNK", SMALL):
        hasher = ChunkHasher(20, 20)
        assert hasher.update(b"") == []
        with pytest.raises(ValueError):
            hasher.update(b"x")


# -- hash_file -------------------------------------------------------------------------------------------------

def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_hash_file_of_an_empty_file(tmp_path):
    path = write(tmp_path, "empty", b"")
    assert hash_file(path) == (H(b"").hex(), b"", 0)
    assert ChunkHasher(0).update(b"") == []


def test_hash_file_of_one_byte(tmp_path):
    path = write(tmp_path, "one", b"x")
    digest = H(b"x")
    assert hash_file(path) == (H(digest).hex(), digest, 1)
    assert ChunkHasher(1).update(b"x") == [digest]


@pytest.mark.parametrize("size", [15, 16, 17, 100, 16 * 9])
def test_hash_file_agrees_with_chunk_hasher_and_root_of(tmp_path, monkeypatch, size):
    monkeypatch.setattr(filehash, "MIN_CHUNK", SMALL)
    data = content(size)
    path = write(tmp_path, "f", data)
    expected = b"".join(direct(data, SMALL))
    assert b"".join(ChunkHasher(size).update(data)) == expected
    root, digests, got_size = hash_file(path)
    assert (digests, got_size) == (expected, size)
    assert root == root_of(expected) == H(expected).hex()
    assert len(digests) == chunk_count(size) * filehash.DIGEST


@pytest.mark.parametrize("size", [0, 1, 16, 17, 1000])
def test_hash_file_gives_the_same_result_with_one_or_four_workers(tmp_path, monkeypatch, size):
    monkeypatch.setattr(filehash, "MIN_CHUNK", SMALL)
    path = write(tmp_path, "f", content(size))
    one = hash_file(path, workers=1)
    assert hash_file(path, workers=4) == one
    assert hash_file(path, size=size, workers=4) == one
    assert hash_file(path) == one


def test_hash_file_with_real_chunks(tmp_path):
    """Without a patched MIN_CHUNK: 4 MiB + 1 bytes are two chunks, the second one byte."""
    data = content(4 * MiB + 1)
    path = write(tmp_path, "f", data)
    root, digests, size = hash_file(path, workers=2)
    expected = H(data[:4 * MiB]) + H(data[4 * MiB:])
    assert (root, digests, size) == (root_of(expected), expected, 4 * MiB + 1)


def test_hash_file_notices_a_file_shorter_than_the_size_given(tmp_path, monkeypatch):
    monkeypatch.setattr(filehash, "MIN_CHUNK", SMALL)
    path = write(tmp_path, "f", content(40))
    for workers in (1, 4):
        with pytest.raises(OSError):
            hash_file(path, size=50, workers=workers)


def test_hash_file_of_a_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        hash_file(str(tmp_path / "nope"))
