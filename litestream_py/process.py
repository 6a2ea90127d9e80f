"""Process-wide tuning: for the sidecar, which keeps many databases open in few
threads, and for a restore command, which streams a database through a few big buffers."""

from __future__ import annotations

import ctypes
import resource
import threading

from .errors import ConfigError

__all__ = ["DESCRIPTORS_PER_DB", "SPARE_DESCRIPTORS", "configure_process_for_restore", "configure_process_for_sidecar",
           "raise_open_file_limit", "release_free_memory", "release_start_up_pages"]

SIDECAR_THREAD_STACK_SIZE = 512 * 1024
M_ARENA_MAX = -8  # glibc mallopt parameters
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MADV_DONTNEED = 4  # Linux madvise advice
# Buffers this large (WAL chunks, compressed segments) get their own mapping,
# returned to the OS when freed, whichever worker thread and arena they came from.
SIDECAR_MMAP_THRESHOLD = 256 * 1024
# A restore's decoded pieces (16 MiB each) are served from the heap and reused
# once freed: as fresh mappings, every piece's pages fault in again.
RESTORE_MMAP_THRESHOLD = 256 << 20


def configure_process_for_sidecar() -> None:
    """Process-wide SQLite settings for a sidecar that keeps many databases open.

    Each connection would otherwise reserve ~120 KiB of lookaside memory that
    lsr's few statements never need. Call before the first connection opens.
    """
    import apsw  # here: the restore command tunes its process too, and opens no SQLite

    apsw.shutdown()
    apsw.config(apsw.SQLITE_CONFIG_LOOKASIDE, 0, 0)
    apsw.initialize()
    # glibc gives busy threads their own malloc arenas, which keep freed memory;
    # two thousand mostly idle threads need no more than a couple.
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(M_ARENA_MAX, 2)
        libc.mallopt(M_MMAP_THRESHOLD, SIDECAR_MMAP_THRESHOLD)
    except (OSError, AttributeError):
        pass
    # Sidecar threads run shallow code; the default 8 MiB stacks only cost memory.
    threading.stack_size(SIDECAR_THREAD_STACK_SIZE)


# What an open database holds once it has checkpointed: the database file four
# times (the read connection's, lsr's own for pread, and two of closed
# connections, a writer's and a read lock's predecessor, which SQLite keeps
# until the process's last lock on the file goes), the -shm twice, the -wal,
# and the meta directory's lock file.
DESCRIPTORS_PER_DB = 8
# Beyond the databases: standard streams, inotify, sockets, replica files being written.
SPARE_DESCRIPTORS = 256


def raise_open_file_limit(databases: int) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (as Go's runtime does) and return it.

    Raises ConfigError when ``databases`` cannot all be held open within it,
    before any is opened: a sidecar that ran out half-way would replicate some
    databases and fail on the rest with EMFILE.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass  # keep the soft limit; the check below says whether it suffices
    need = databases * DESCRIPTORS_PER_DB + SPARE_DESCRIPTORS
    if soft != resource.RLIM_INFINITY and need > soft:
        raise ConfigError(
            f"cannot open {databases} databases: the open-file limit is {soft} and they need about {need} "
            f"({DESCRIPTORS_PER_DB} each); raise LimitNOFILE (ulimit -n)"
        )
    return soft


def release_free_memory() -> None:
    """Hand memory that malloc holds free back to the OS (glibc; elsewhere a no-op).

    Bursts such as the first snapshots of a thousand databases leave the heap
    full of freed chunks that glibc keeps: ~50 MiB for 1,000 databases.
    """
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def configure_process_for_restore() -> None:
    """Malloc settings for a short-lived restore command (glibc; elsewhere a no-op).

    In a fresh process glibc gives each large buffer its own mapping and unmaps
    it when freed, so each piece of the decoded snapshot page-faults in anew
    (its dynamic threshold only rises after the first frees). Kept on the heap
    and not trimmed, the pieces reuse memory already touched.
    """
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, RESTORE_MMAP_THRESHOLD)
        libc.mallopt(M_TRIM_THRESHOLD, 2 * RESTORE_MMAP_THRESHOLD)
    except (OSError, AttributeError):
        pass


def release_start_up_pages() -> int:
    """Unmap the resident pages of read-only file mappings that hold no private
    copy (libraries' code and constants); returns how many mappings (Linux; elsewhere 0).

    Loading and initialising the interpreter and the libraries a sidecar
    imports (numpy and its OpenBLAS, SQLite) touches much of each of them once,
    and those pages stay in its resident set though most never run again.
    They are clean copies of the files: dropped, a page that is used again
    faults back in from the page cache. A mapping with a private page (a
    relocated or otherwise written copy, resident or swapped) is left alone:
    dropping it would lose the change.
    """
    try:
        with open("/proc/self/smaps", encoding="utf-8", errors="replace") as f:
            text = f.read()
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
    except (OSError, AttributeError):
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    released = 0
    for start, end, clean in _read_only_file_mappings(text):
        if clean and madvise(start, end - start, MADV_DONTNEED) == 0:
            released += 1
    return released


def _read_only_file_mappings(smaps: str) -> list[tuple[int, int, bool]]:
    """(start, end, holds no private page) of each private, unwritable file mapping in ``smaps``."""
    out: list[tuple[int, int, bool]] = []
    tracked = False
    for line in smaps.splitlines():
        fields = line.split()
        if not fields:
            continue
        if not fields[0].endswith(":"):  # a mapping's first line: range, perms, offset, device, inode, path
            tracked = len(fields) >= 6 and fields[5].startswith("/") and fields[1][1] != "w" and fields[1][3] == "p"
            if tracked:
                start, end = (int(x, 16) for x in fields[0].split("-"))
                out.append((start, end, True))
        elif tracked and fields[0] in ("Anonymous:", "Swap:") and int(fields[1]) > 0:
            out[-1] = (out[-1][0], out[-1][1], False)
    return out
