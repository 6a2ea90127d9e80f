"""Process-wide tuning: for the sidecar, which keeps many databases open in few
threads, and for a restore command, which streams a database through a few big buffers."""

from __future__ import annotations

import ctypes
import resource
import threading

from .errors import ConfigError

__all__ = ["DESCRIPTORS_PER_DB", "DORMANT_DESCRIPTORS_PER_DB", "MIN_AWAKE_DBS", "SPARE_DESCRIPTORS", "configure_process_for_restore", "configure_process_for_sidecar",
           "raise_open_file_limit", "release_free_memory"]

SIDECAR_THREAD_STACK_SIZE = 512 * 1024
M_ARENA_MAX = -8  # glibc mallopt parameters
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
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
# A dormant database (dormancy.py) holds only its meta directory's lock file.
DORMANT_DESCRIPTORS_PER_DB = 1
# Beyond the databases: standard streams, inotify, sockets, replica files being written.
SPARE_DESCRIPTORS = 256
# Fewer databases awake at once than this (or than all of them) is refused:
# they would queue for descriptors behind every busy one.
MIN_AWAKE_DBS = 64


def raise_open_file_limit(databases: int) -> int | None:
    """Raise the soft RLIMIT_NOFILE to the hard limit (as Go's runtime does) and
    return how many databases may be awake at once within it (None: all of them).

    Databases past that many open as others go dormant. Raises ConfigError when
    even that cannot fit, before any is opened: a sidecar that ran out half-way
    would replicate some databases and fail on the rest with EMFILE.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass  # keep the soft limit; the check below says whether it suffices
    if soft == resource.RLIM_INFINITY or databases * DESCRIPTORS_PER_DB + SPARE_DESCRIPTORS <= soft:
        return None
    extra = DESCRIPTORS_PER_DB - DORMANT_DESCRIPTORS_PER_DB  # of an awake database over a dormant one
    awake = (soft - SPARE_DESCRIPTORS - databases * DORMANT_DESCRIPTORS_PER_DB) // extra
    if awake < min(databases, MIN_AWAKE_DBS):
        need = databases * DORMANT_DESCRIPTORS_PER_DB + min(databases, MIN_AWAKE_DBS) * extra + SPARE_DESCRIPTORS
        raise ConfigError(
            f"cannot open {databases} databases: the open-file limit is {soft} and they need about {need} "
            f"({DESCRIPTORS_PER_DB} each while in use, {DORMANT_DESCRIPTORS_PER_DB} while dormant); "
            "raise LimitNOFILE (ulimit -n)"
        )
    return awake


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
