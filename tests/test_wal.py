"""WAL parsing and checksums, on WAL files written by SQLite itself."""

from __future__ import annotations

import os
import shutil
import sqlite3
import struct
from pathlib import Path

import pytest

from litestream_py.errors import WALFormatError
from litestream_py.wal import (
    WAL_FRAME_HEADER_SIZE,
    WAL_HEADER_SIZE,
    WAL_MAGIC_BE,
    WAL_MAGIC_LE,
    FrameHeader,
    WALHeader,
    checksum,
    check_frames,
    check_frames_c,
    check_frames_py,
    checksum_chain,
    checksum_reference,
    commit_frame_ends,
    frame_align,
    salted_frames,
    scan_frames,
)
from support.sqlite import write_wal


def reencode_big_endian(wal: bytes) -> bytes:
    """The same WAL with big-endian checksums: what SQLite writes on a big-endian host."""
    page_size = WALHeader.parse(wal).page_size
    out = bytearray(wal)
    struct.pack_into(">I", out, 0, WAL_MAGIC_BE)
    s0, s1 = checksum(True, 0, 0, bytes(out[:24]))
    struct.pack_into(">II", out, 24, s0, s1)
    frame = WAL_FRAME_HEADER_SIZE + page_size
    for off in range(WAL_HEADER_SIZE, len(out) - frame + 1, frame):
        s0, s1 = checksum(True, s0, s1, bytes(out[off : off + 8]))
        s0, s1 = checksum(True, s0, s1, bytes(out[off + WAL_FRAME_HEADER_SIZE : off + frame]))
        struct.pack_into(">II", out, off + 16, s0, s1)
    return bytes(out)


@pytest.mark.parametrize("page_size", [1024, 4096, 65536])
def test_parse_sqlite_wal(tmp_path: Path, page_size: int) -> None:
    _, wal = write_wal(tmp_path, page_size)
    header = WALHeader.parse(wal)
    assert header.page_size == page_size
    assert header.magic in (WAL_MAGIC_LE, WAL_MAGIC_BE)
    result = scan_frames(memoryview(wal)[WAL_HEADER_SIZE:], header, (header.checksum1, header.checksum2), strict=True)
    assert result.committed == len(wal) - WAL_HEADER_SIZE
    # CREATE TABLE + 5 explicit transactions.
    assert len(result.commits) == 6
    last = FrameHeader.parse(wal[WAL_HEADER_SIZE + result.commits[-1] - WAL_FRAME_HEADER_SIZE - page_size :])
    assert last.commit_size > 0


@pytest.mark.parametrize("page_size", [1024, 4096, 65536])
def test_big_endian_checksums_are_read_by_sqlite_and_lsr(tmp_path: Path, page_size: int) -> None:
    db, wal = write_wal(tmp_path, page_size)
    be = reencode_big_endian(wal)
    header = WALHeader.parse(be)
    assert header.big_endian
    result = scan_frames(memoryview(be)[WAL_HEADER_SIZE:], header, (header.checksum1, header.checksum2), strict=True)
    assert result.committed == len(be) - WAL_HEADER_SIZE
    # SQLite itself accepts the big-endian WAL: every committed row is visible.
    copy = tmp_path / "be.db"
    shutil.copy(db, copy)
    Path(str(copy) + "-wal").write_bytes(be)
    conn = sqlite3.connect(copy)
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (15,)
    conn.close()


def test_vectorised_checksum_matches_reference() -> None:
    for n in (8, 1032, 4104, 65544, 70000 * 8):
        data = os.urandom(n)
        for big in (False, True):
            assert checksum(big, 7, 11, data) == checksum_reference(big, 7, 11, data)


@pytest.mark.parametrize("big", [False, True])
def test_checksum_chain_matches_reference_frame_by_frame(big: bool) -> None:
    """Every cumulative sum of a long run of random frames (wrapping uint32 arithmetic, many scan rounds)."""
    page_size = 1024
    frame = WAL_FRAME_HEADER_SIZE + page_size
    count = 300
    data = os.urandom(count * frame)
    magic = WAL_MAGIC_BE if big else WAL_MAGIC_LE
    header = WALHeader.parse(struct.pack(">IIIIII", magic, 3007000, page_size, 0, 1, 2) + b"\0" * 8, verify=False)
    sums = checksum_chain(data, header, (0xDEADBEEF, 0xFFFFFFFF))
    s0, s1 = 0xDEADBEEF, 0xFFFFFFFF
    for k in range(count):
        start = k * frame
        s0, s1 = checksum_reference(big, s0, s1, data[start : start + 8])
        s0, s1 = checksum_reference(big, s0, s1, data[start + WAL_FRAME_HEADER_SIZE : start + frame])
        assert (int(sums[k, 0]), int(sums[k, 1])) == (s0, s1), f"frame {k}"


@pytest.mark.parametrize("big,page_size", [(False, 512), (True, 1024), (False, 65536)])
def test_pure_python_and_c_frame_checks_agree_with_numpys(big: bool, page_size: int) -> None:
    """check_frames_py (restores of small WAL without _walcheck: no numpy import) and
    check_frames_c (restores) give check_frames' fields, sums (the C one: the last) and
    problem: on valid frames, a flipped bit, and a frame of another WAL (salt)."""
    frame = WAL_FRAME_HEADER_SIZE + page_size
    magic = WAL_MAGIC_BE if big else WAL_MAGIC_LE
    header = WALHeader.parse(struct.pack(">IIIIII", magic, 3007000, page_size, 0, 1, 2) + b"\0" * 8, verify=False)
    count = 5 if page_size == 65536 else 40
    data = bytearray(os.urandom(count * frame))
    s = (0xDEADBEEF, 0xFFFFFFFF)
    for k in range(count):  # each frame a valid continuation of the chain, with the header's salts
        start = k * frame
        data[start + 8 : start + 16] = struct.pack(">II", 1, 2)
        s = checksum_reference(big, *s, bytes(data[start : start + 8]))
        s = checksum_reference(big, *s, bytes(data[start + WAL_FRAME_HEADER_SIZE : start + frame]))
        data[start + 16 : start + 24] = struct.pack(">II", *s)
    flipped = bytearray(data)
    flipped[3 * frame + WAL_FRAME_HEADER_SIZE + 7] ^= 0x10
    foreign = bytearray(data)
    foreign[4 * frame + 8] ^= 0x01  # salt1 of the fifth frame
    for case, want in ((data, (count, "")), (flipped, (3, "checksum mismatch")), (foreign, (4, "salt mismatch"))):
        fields, sums, problem = check_frames_py(bytes(case), header, (0xDEADBEEF, 0xFFFFFFFF))
        check = check_frames(bytes(case), header, (0xDEADBEEF, 0xFFFFFFFF))
        assert (len(fields), problem) == want == (check.valid, check.problem)
        assert [list(f) for f in fields] == check.fields[:, :2].tolist()
        assert [list(x) for x in sums] == check.sums.tolist()
        c_fields, chain, c_problem = check_frames_c(bytes(case), header, (0xDEADBEEF, 0xFFFFFFFF))
        assert (c_fields, c_problem) == (fields, problem)
        assert list(chain) == check.sums[-1].tolist()


@pytest.mark.parametrize("implementation", ["c", "numpy"])
@pytest.mark.parametrize("big,page_size", [(False, 512), (True, 1024), (False, 4096), (True, 65536)])
def test_scan_in_c_agrees_with_the_reference_loop(big: bool, page_size: int, implementation: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """scan_frames (_walcheck.c, or numpy where it was not built) against SQLite's loop in
    Python, frame by frame: the valid frames, each commit's end, the chain after the frames
    and after the last commit; on valid frames, a flipped page bit, a flipped commit field,
    a foreign salt."""
    import litestream_py.wal as wal

    assert wal._walcheck is not None, "the C extension was not built (the test set-up has a compiler)"
    if implementation == "numpy":
        monkeypatch.setattr(wal, "_walcheck", None)
    frame = WAL_FRAME_HEADER_SIZE + page_size
    magic = WAL_MAGIC_BE if big else WAL_MAGIC_LE
    header = WALHeader.parse(struct.pack(">IIIIII", magic, 3007000, page_size, 0, 0xFEDCBA98, 2) + b"\0" * 8,
                             verify=False)
    count = 6 if page_size == 65536 else 40
    commit_frames = {1, 2, count // 2, count - 2}  # not the last: frames past the last commit
    data = bytearray(os.urandom(count * frame))
    start_sum = (0xDEADBEEF, 0xFFFFFFFF)
    chain = []
    s = start_sum
    for k in range(count):
        at = k * frame
        data[at + 4 : at + 16] = struct.pack(">III", k + 1 if k in commit_frames else 0, 0xFEDCBA98, 2)
        s = checksum_reference(big, *s, bytes(data[at : at + 8]))
        s = checksum_reference(big, *s, bytes(data[at + WAL_FRAME_HEADER_SIZE : at + frame]))
        data[at + 16 : at + 24] = struct.pack(">II", *s)
        chain.append(s)
    page_bit = bytearray(data)
    page_bit[3 * frame + frame - 1] ^= 0x80
    commit_field = bytearray(data)
    commit_field[count // 2 * frame + 7] ^= 0x01
    foreign = bytearray(data)
    foreign[4 * frame + 15] ^= 0x01  # salt2 of the fifth frame
    for case, valid, problem in ((data, count, ""), (page_bit, 3, "checksum mismatch"),
                                 (commit_field, count // 2, "checksum mismatch"), (foreign, 4, "salt mismatch")):
        result = scan_frames(memoryview(bytes(case)), header, start_sum)
        commits = [(k + 1) * frame for k in sorted(commit_frames) if k < valid]
        assert (result.frames, result.commits, result.committed) == (valid, commits, commits[-1])
        assert result.frames_checksum == chain[valid - 1]
        assert result.checksum == chain[commits[-1] // frame - 1]
        if problem:
            with pytest.raises(WALFormatError, match=f"at \\+{valid * frame}: {problem}"):
                scan_frames(bytes(case), header, start_sum, strict=True)
    none = scan_frames(bytes(data[: frame - 1]), header, start_sum)  # no whole frame
    assert (none.frames, none.commits, none.committed, none.checksum) == (0, [], 0, start_sum)
    assert salted_frames(bytes(foreign), header) == 4 and salted_frames(bytes(data), header) == count
    assert commit_frame_ends(bytes(data), page_size) == [(k + 1) * frame for k in sorted(commit_frames)]


def test_scan_stops_at_corrupt_frame(tmp_path: Path) -> None:
    _, wal = write_wal(tmp_path, 4096)
    header = WALHeader.parse(wal)
    frame = WAL_FRAME_HEADER_SIZE + 4096
    corrupt = bytearray(wal)
    corrupt[WAL_HEADER_SIZE + 2 * frame + 100] ^= 0xFF  # inside the third frame's page
    data = memoryview(bytes(corrupt))[WAL_HEADER_SIZE:]
    result = scan_frames(data, header, (header.checksum1, header.checksum2))
    assert result.frames == 2
    assert result.committed <= 2 * frame
    with pytest.raises(WALFormatError, match="checksum mismatch"):
        scan_frames(data, header, (header.checksum1, header.checksum2), strict=True)


def test_scan_stops_at_salt_change(tmp_path: Path) -> None:
    _, wal = write_wal(tmp_path, 1024)
    header = WALHeader.parse(wal)
    changed = bytearray(wal)
    changed[WAL_HEADER_SIZE + 8] ^= 1  # salt-1 of the first frame
    result = scan_frames(memoryview(bytes(changed))[WAL_HEADER_SIZE:], header, (header.checksum1, header.checksum2))
    assert result.frames == 0 and result.committed == 0


def test_header_rejects_bad_magic_and_checksum(tmp_path: Path) -> None:
    _, wal = write_wal(tmp_path, 4096)
    with pytest.raises(WALFormatError, match="magic"):
        WALHeader.parse(b"\0" * 32)
    bad = bytearray(wal[:32])
    bad[12] ^= 1  # checkpoint sequence, covered by the header checksum
    with pytest.raises(WALFormatError, match="checksum"):
        WALHeader.parse(bytes(bad))
    with pytest.raises(WALFormatError):
        WALHeader.parse(wal[:10])


def test_frame_align() -> None:
    assert frame_align(0, 4096) == 0
    assert frame_align(31, 4096) == 0
    assert frame_align(32, 4096) == 32
    assert frame_align(32 + 4120 - 1, 4096) == 32
    assert frame_align(32 + 4120 * 3 + 5, 4096) == 32 + 4120 * 3
