"""Change detection: inotify wakes a database's monitor on every WAL write, not a poll."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from support.procs import Processes, wait_for
from support.sqlite import open_app_db
from litestream_py.watch import WALWatcher
from support.workload import assert_same_data, restore, segment_names, shipped_since, start_lsr, stop_lsr, wait_ready

WAKE_TIMEOUT = 5.0


def test_watcher_follows_the_wal_through_creation_writes_and_recreation(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    wal = Path(str(db) + "-wal")
    watcher = WALWatcher()
    assert watcher.start()
    try:
        wake = threading.Event()
        watcher.watch(str(db), wake.set)  # neither the database nor its WAL exists yet
        assert watcher.watching(str(db))
        app = open_app_db(db)
        app.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        assert wake.wait(WAKE_TIMEOUT), "no wake when the database and its WAL appeared"
        for i in range(3):
            time.sleep(0.05)
            wake.clear()
            watcher.arm(str(db))  # as the monitor does before each sync
            app.execute("INSERT INTO t (v) VALUES (?)", (f"row {i}",))
            assert wake.wait(WAKE_TIMEOUT), f"no wake for write {i}"
        # The last connection to close checkpoints and deletes the WAL; the next
        # one creates a new file, which must be watched in turn.
        app.close()
        assert not wal.exists()
        app = open_app_db(db)
        app.execute("INSERT INTO t (v) VALUES ('new wal')")
        assert wal.exists()
        time.sleep(0.2)  # let the creation's events go by
        wake.clear()
        watcher.arm(str(db))
        app.execute("INSERT INTO t (v) VALUES ('written to the new wal')")
        assert wake.wait(WAKE_TIMEOUT), "no wake for a write to the recreated WAL"
        app.close()
    finally:
        watcher.stop()


class HeldPause:
    """The reader's sleep, held until the test lets it end: what a pause lets
    pile up is then up to the test, not to how fast this machine runs."""

    def __init__(self) -> None:
        self.asked: list[float] = []
        self._gate = threading.Semaphore(0)
        self.pausing = threading.Event()

    def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)
        self.pausing.set()
        self._gate.acquire(timeout=WAKE_TIMEOUT)
        self.pausing.clear()

    def end_one(self) -> None:
        self._gate.release()


def test_a_pause_batches_a_burst_of_writes_but_not_the_first(tmp_path: Path) -> None:
    """While its owner says events may wait (no monitor could start sooner), the
    reader lets a burst of writes pile up in the kernel: one wake when the pause
    ends, not one per commit. The first write after a quiet spell still wakes at
    once, without waiting for any pause."""
    db = tmp_path / "app.db"
    app = open_app_db(db)
    app.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    wakes: list[str] = []
    held = HeldPause()
    watcher = WALWatcher(pause=lambda: 0.25, sleep=held)
    assert watcher.start()
    try:
        def wake() -> None:  # a monitor that syncs at once, arming the watch first
            wakes.append("wake")
            watcher.arm(str(db))

        watcher.watch(str(db), wake)
        # Let every pause of the set-up end, until the reader waits for events.
        while held.pausing.wait(0.2):
            held.end_one()
            time.sleep(0.05)
        wakes.clear()
        app.execute("INSERT INTO t (v) VALUES ('first after a quiet spell')")
        wait_for(lambda: bool(wakes), timeout=WAKE_TIMEOUT, what="a wake for the first write")
        assert held.pausing.wait(WAKE_TIMEOUT), "the reader did not pause after the wake"
        for i in range(100):  # during the pause
            app.execute("INSERT INTO t (v) VALUES (?)", (f"burst {i}",))
        time.sleep(0.2)
        assert wakes == ["wake"], f"{len(wakes) - 1} wakes for writes made while the reader paused"
        held.end_one()
        wait_for(lambda: len(wakes) >= 2, timeout=WAKE_TIMEOUT, what="a wake when the pause ended")
        assert held.pausing.wait(WAKE_TIMEOUT)
        time.sleep(0.2)
        assert wakes == ["wake", "wake"], f"{len(wakes) - 1} wakes for a burst of 100 writes (want 1)"
        assert held.asked[-1] == 0.25, held.asked
    finally:
        held.end_one()
        watcher.stop()
        app.close()


def test_a_fired_watch_costs_the_writer_nothing_until_armed_again(tmp_path: Path) -> None:
    """The WAL watch is one-shot: after it wakes the DB, the writer's writes raise
    no inotify event at all until the monitor arms it again before its next read;
    then the next write wakes the DB once more."""
    db = tmp_path / "app.db"
    app = open_app_db(db)
    app.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    wakes: list[float] = []
    watcher = WALWatcher()
    assert watcher.start()
    try:
        watcher.watch(str(db), lambda: wakes.append(time.monotonic()))
        app.execute("INSERT INTO t (v) VALUES ('first')")
        deadline = time.monotonic() + WAKE_TIMEOUT
        while not wakes and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(wakes) == 1, "no wake for the first write"
        for i in range(20):
            app.execute("INSERT INTO t (v) VALUES (?)", (f"unwatched {i}",))
        time.sleep(0.2)
        assert len(wakes) == 1, f"{len(wakes) - 1} wakes from writes after the watch fired, before it was armed"
        watcher.arm(str(db))
        watcher.arm(str(db))  # arming an armed watch adds nothing
        app.execute("INSERT INTO t (v) VALUES ('watched again')")
        deadline = time.monotonic() + WAKE_TIMEOUT
        while len(wakes) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        assert len(wakes) == 2, f"{len(wakes) - 1} wakes for one write after arming again (want 1)"
    finally:
        watcher.stop()
        app.close()


class _Probe:
    """A watchdog callback that does nothing: added to learn a watch's descriptor."""

    def on_event(self, event: object) -> None: ...
    def on_watch_deleted(self, wd: int) -> None: ...
    def on_queue_overflow(self) -> None: ...
    def on_events_lost(self) -> None: ...


@contextlib.contextmanager
def monitored_db(tmp_path: Path) -> Iterator[tuple[Path, Any, WALWatcher, threading.Event]]:
    """A database, its WAL watched by a running WALWatcher whose wake acts as a
    monitor that syncs at once (arming the watch first) and sets the event."""
    db = tmp_path / "app.db"
    app = open_app_db(db)
    app.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    woke = threading.Event()
    watcher = WALWatcher()
    assert watcher.start()
    try:
        def wake() -> None:
            watcher.arm(str(db))
            woke.set()

        watcher.watch(str(db), wake)
        yield db, app, watcher, woke
    finally:
        watcher.stop()
        app.close()


def test_an_arming_taken_by_the_firing_watchs_removal_wakes_the_db(tmp_path: Path) -> None:
    """The kernel queues a one-shot watch's event, then removes the watch. A
    monitor woken by that event may arm again in between (the writer
    preempted there, rare but seen on a loaded machine): inotify_add_watch
    then returns the same watch, and its removal (IN_IGNORED) takes the new
    arming along. Nothing else wakes the DB, so its syncs stopped until the 30 s
    fallback poll while the writer kept committing. The test plays the
    kernel's part in that order through the reader's own dispatch (real
    watches, a real write at the end): the removal wakes the DB, whose monitor
    arms a watch that the next write fires."""
    from watchdog.observers.inotify_c import InotifyConstants, InotifyEvent

    with monitored_db(tmp_path) as (db, app, watcher, woke):
        wal = str(db) + "-wal"
        inotify = watcher._inotify  # the reader's InotifyFD, to deliver the kernel's events in the race's order
        mask = InotifyConstants.IN_MODIFY | InotifyConstants.IN_ONESHOT
        wd = inotify.add_callback(wal.encode(), mask, _Probe(), -1)  # the armed watch's descriptor
        # A write's event, delivered while its watch is still there: the monitor
        # arms again, and the kernel hands back that same watch...
        inotify.handle_event(InotifyEvent(wd, InotifyConstants.IN_MODIFY, 0, b""))
        assert woke.is_set()
        assert inotify.add_callback(wal.encode(), mask, _Probe(), -2) == wd, "the re-arming got a watch of its own"
        # ...which the kernel then removes, with every arming on it.
        inotify.handle_event(InotifyEvent(wd, InotifyConstants.IN_IGNORED, 0, b""))
        woke.clear()
        app.execute("INSERT INTO t (v) VALUES ('written after the monitor armed')")
        assert woke.wait(WAKE_TIMEOUT), "a write after arm() woke nothing: its arming went with the fired watch"


def test_an_overflowing_event_queue_wakes_every_db_and_the_watch_goes_on(tmp_path: Path) -> None:
    """When the kernel's inotify queue overflows, events were lost: every DB is woken
    (its monitor syncs and arms again), and the reader keeps reading. The overflow is
    delivered through the reader's own dispatch (filling the kernel's queue takes
    ~16,000 events); the write after it is real."""
    from watchdog.observers.inotify_c import InotifyConstants, InotifyEvent

    with monitored_db(tmp_path) as (db, app, watcher, woke):
        watcher._inotify.handle_event(InotifyEvent(-1, InotifyConstants.IN_Q_OVERFLOW, 0, b""))
        assert woke.wait(WAKE_TIMEOUT), "the overflow woke nothing"
        woke.clear()
        app.execute("INSERT INTO t (v) VALUES ('written after the overflow')")
        assert woke.wait(WAKE_TIMEOUT), "a write after the overflow woke nothing"


def test_commits_ship_without_waiting_for_the_poll(tmp_path: Path, procs: Processes) -> None:
    """With an hour-long monitor interval only inotify can explain a commit reaching the replica."""
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    app = open_app_db(db)
    app.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    p = start_lsr(procs, tmp_path, db, replica, "config", **{"monitor-interval": "1h"})
    wait_ready(p, replica)
    for i in range(3):
        shipped = segment_names(replica)
        app.execute("INSERT INTO t (v) VALUES (?)", (f"row {i}",))
        deadline = time.monotonic() + 10
        while not shipped_since(replica, shipped):
            assert time.monotonic() < deadline, f"commit {i} not shipped within 10 s: no inotify wake"
            time.sleep(0.02)
    stop_lsr(p)
    app.close()
    restored = tmp_path / "restored.db"
    restore(f"file://{replica}", restored)
    assert_same_data(db, restored)


def test_unwritten_for_counts_from_the_last_sync_and_ignores_lsrs_checkpoints(tmp_path: Path) -> None:
    """``DB.unwritten_for`` (how an S3 replica tells a paused writer from a busy
    one) is 0 once a commit lands after a sync began, and otherwise grows from
    that sync's start. A sync's checkpoint, with the write by which lsr restarts
    the WAL, does not count: that write is copied within the same sync. (The
    app's writes here never overlap lsr's work: two SQLite copies in one process
    do not see each other's locks.)"""
    from litestream_py.db import DB, RESTART_QUIET

    path = tmp_path / "app.db"
    app = open_app_db(path)
    app.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    db = DB(str(path), min_checkpoint_page_count=1)  # every sync checkpoints
    try:
        db.open()
        db.sync()
        time.sleep(0.1)
        assert db.unwritten_for() >= 0.1
        # The first sync may have left restarting the WAL to the application (it
        # had just written): now that it is quiet, lsr restarts it itself.
        db.sync()
        for i in range(2):
            app.execute("INSERT INTO t (v) VALUES (?)", (f"commit {i}",))
            assert db.unwritten_for() == 0.0
            # A writer that wrote within RESTART_QUIET restarts the WAL itself;
            # past it, the sync's checkpoint restarts it with a write of lsr's.
            time.sleep(RESTART_QUIET.total_seconds() + 0.01)
            index = db.pos().index
            db.sync()
            assert db.pos().index == index + 1, "the sync did not checkpoint and restart the WAL"
            time.sleep(0.06)
            assert db.unwritten_for() >= 0.06, "lsr's own checkpoint counted as a write"
    finally:
        db.close()
        app.close()


def test_unwritten_for_ignores_the_apps_checkpoint(tmp_path: Path) -> None:
    """The application's own checkpoint (its wal_autocheckpoint after a commit)
    rewrites the checkpoint info in -shm but not the WAL: no write, so the pause
    still counts. It did count as a write, and as nothing wakes a sync then (the
    WAL file is untouched), an S3 replica's last commits waited out the
    interval: catch-up 1.07 s instead of ~0.1."""
    from litestream_py.db import DB
    from litestream_py.sqlite_locks import WAL_INDEX_HEADER_SIZE

    path = tmp_path / "app.db"
    app = open_app_db(path)
    app.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    app.execute("INSERT INTO t (v) VALUES ('one')")
    db = DB(str(path))
    try:
        db.open()
        db.sync()
        shm = (tmp_path / "app.db-shm").read_bytes()[:WAL_INDEX_HEADER_SIZE]
        busy, frames, backfilled = app.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert busy == 0 and frames > 0 and backfilled == frames
        assert (tmp_path / "app.db-shm").read_bytes()[:WAL_INDEX_HEADER_SIZE] != shm, "the checkpoint left -shm as it was"
        time.sleep(0.06)
        assert db.unwritten_for() >= 0.06, "the app's checkpoint counted as a write"
        app.execute("INSERT INTO t (v) VALUES ('two')")
        assert db.unwritten_for() == 0.0
    finally:
        db.close()
        app.close()


def test_unwritten_for_counts_from_a_change_no_sync_followed(tmp_path: Path) -> None:
    """A change of the WAL's fingerprint that no sync follows counts as a write
    once, then the pause counts from when it was seen. A commit updates the
    wal-index header after writing its frames; a sync in between copies the
    commit with the old header, and no inotify event brings another sync: the
    pause never began, and an S3 replica's last commits waited out the interval
    (CI: "the last commits took 0.97 s to reach S3")."""
    from litestream_py.db import DB

    path = tmp_path / "app.db"
    app = open_app_db(path)
    app.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    db = DB(str(path))
    try:
        db.open()
        db.sync()
        app.execute("INSERT INTO t (v) VALUES ('not synced')")
        assert db.unwritten_for() == 0.0
        time.sleep(0.06)
        assert db.unwritten_for() >= 0.06, "a change no sync followed never stopped counting as a write"
    finally:
        db.close()
        app.close()
