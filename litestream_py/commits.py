"""When each commit was captured: the times that date WAL segments for restores to a timestamp.

A sync notes, for each commit it copies into a shadow WAL index, the shadow
offset just past the commit frame and the time it read it. Segments carry
these times (codec), so a restore to a timestamp can stop between two commits
of one segment. They are kept in a ``.commits`` file beside each shadow WAL
index, so a restarted lsr still dates what it ships next. The file is never
fsynced: after a power loss its tail may be torn or missing (only the valid
prefix is kept) and a segment then falls back to its own timestamp.
"""

from __future__ import annotations

import bisect
import os
import struct
from typing import Callable

__all__ = ["CommitLog", "COMMITS_EXT", "COMMIT_ENTRY"]

COMMITS_EXT = ".commits"
# One commit's (shadow WAL offset just past its commit frame, capture time in
# ns), little-endian: the record of a .commits file and of a segment's times (codec).
COMMIT_ENTRY = struct.Struct("<QQ")


def _valid_entries(raw: bytes) -> list[tuple[int, int]]:
    """The entries of a .commits file, up to the first that is torn or out of
    order (offsets only grow within one shadow index)."""
    entries: list[tuple[int, int]] = []
    for i in range(0, len(raw) - COMMIT_ENTRY.size + 1, COMMIT_ENTRY.size):
        offset, captured = COMMIT_ENTRY.unpack_from(raw, i)
        if captured == 0 or (entries and offset <= entries[-1][0]):
            break
        entries.append((offset, captured))
    return entries


class CommitLog:
    """The capture times of one DB's commits, per (generation, shadow index)."""

    def __init__(self, path_of: Callable[[str, int], str]) -> None:
        self._path_of = path_of  # (generation, index) -> its .commits file
        self._times: dict[tuple[str, int], list[tuple[int, int]]] = {}

    def record(self, generation: str, index: int, commits: list[tuple[int, int]]) -> None:
        """Append (offset, capture ns) entries for commits just copied to the shadow."""
        times = self._load(generation, index)
        with open(self._path_of(generation, index), "ab") as f:
            if times and times[-1][0] >= commits[0][0]:
                # Times of frames a power loss took from the shadow: theirs no longer.
                del times[bisect.bisect_left(times, (commits[0][0], 0)) :]
                f.truncate(len(times) * COMMIT_ENTRY.size)
            f.write(b"".join(COMMIT_ENTRY.pack(o, t) for o, t in commits))
        times.extend(commits)

    def between(self, generation: str, index: int, start: int, end: int) -> list[tuple[int, int]]:
        """(offset, capture ns) of the commits whose frames end within (start, end]."""
        times = self._load(generation, index)
        lo = bisect.bisect_right(times, (start, 2**64))
        hi = bisect.bisect_right(times, (end, 2**64))
        return times[lo:hi]

    def cached_first_after(self, generation: str, index: int, offset: int) -> int | None:
        """Capture time (ns) of the first commit past ``offset`` of an index, from
        memory only (None if unknown): for lag reports, which must not do I/O."""
        times = self._times.get((generation, index))
        if not times:
            return None
        try:  # the syncing thread may cut the list meanwhile (a torn tail): then report nothing
            return times[bisect.bisect_right(times, (offset, 2**64))][1]
        except IndexError:
            return None

    def forget(self, generation: str, index: int) -> None:
        """Drop what is cached for an index whose files were removed."""
        self._times.pop((generation, index), None)

    def _load(self, generation: str, index: int) -> list[tuple[int, int]]:
        key = (generation, index)
        times = self._times.get(key)
        if times is None:
            path = self._path_of(generation, index)
            try:
                with open(path, "rb") as f:
                    raw = f.read()
            except FileNotFoundError:
                raw = b""
            times = _valid_entries(raw)
            if len(times) * COMMIT_ENTRY.size != len(raw):
                # A torn tail (power loss): cut it, or later appends would be misread.
                with open(path, "r+b") as f:
                    f.truncate(len(times) * COMMIT_ENTRY.size)
            self._times[key] = times
        return times
