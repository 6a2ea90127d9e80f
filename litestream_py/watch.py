"""Change detection: wake a DB's monitor as soon as its WAL is written (inotify via watchdog).

One inotify reader thread (watchdog's ``InotifyFD``) serves every database.
Each WAL file has a one-shot modify watch: the first write after the watch is
armed wakes the DB's monitor and removes the watch, and the monitor arms it
again (``arm``) before it reads the WAL, so no write goes unseen. Between the
two the application's writes cost it nothing: with a standing watch, every
page it wrote queued (and merged) an inotify event in the writer's own system
call, ~1.5% of a busy writer's CPU. Each directory has one watch for files
appearing and disappearing, which (re)arms the WAL watch when SQLite creates
the WAL again. The reader pauses after each batch so that a thousand busy
databases cost a few dozen wakeups a second, not one per event: at least
COALESCE_SECONDS, and as long as its owner says events may wait (no monitor
could start sooner anyway). Where inotify is unavailable the monitor falls
back to polling.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from typing import Any, Callable

__all__ = ["DirectoryWatcher", "WALWatcher", "Wake", "Pause"]

# What a watch calls when its DB should sync (thread-safe, returns at once).
Wake = Callable[[], None]

log = logging.getLogger(__name__)

# Shortest pause after each batch of events: bounds wakeups under load, adds at most this to the lag.
COALESCE_SECONDS = 0.002
# How long events may wait in the kernel before the reader wakes for them (see WALWatcher).
Pause = Callable[[], float]

try:
    from watchdog.observers.inotify_c import InotifyConstants as _IN, InotifyFD as _InotifyFD
except (ImportError, OSError):  # not Linux: no inotify
    _InotifyFD = None  # type: ignore[assignment, misc]

if _InotifyFD is not None:
    _FILE_MASK = _IN.IN_MODIFY | _IN.IN_ONESHOT
    _DIR_MASK = _IN.IN_CREATE | _IN.IN_MOVED_TO | _IN.IN_DELETE | _IN.IN_MOVED_FROM
    _APPEARED = _IN.IN_CREATE | _IN.IN_MOVED_TO

    class _BatchingInotify(_InotifyFD):
        def __init__(self, pause: Pause, sleep: Callable[[float], None]) -> None:
            super().__init__()
            self.pause = pause
            self.sleep = sleep

        def run(self) -> None:
            while self.should_keep_running():
                for event in self.read_events():
                    self.handle_event(event)
                # Repeated modify events of one file merge while they wait in the kernel.
                self.sleep(max(self.pause(), COALESCE_SECONDS))


class _Callback:
    """What watchdog calls besides the events; each callback wakes what it
    watches in on_queue_overflow, so the loss report after it has nothing to add.
    (Without this method watchdog's reader thread dies at an overflow, and no
    write would wake anything again.)"""

    def on_events_lost(self) -> None:
        pass


class _WakeOnWrite(_Callback):
    """The callback of one arming of a WAL's one-shot watch: wakes its DB once."""

    def __init__(self, watcher: WALWatcher, wake: Wake) -> None:
        self.watcher = watcher
        self.wake = wake
        self.spent = False  # the watch fired or went away: arm a new one

    def on_event(self, event: Any) -> None:
        self.spent = True
        self.wake()

    def on_watch_deleted(self, wd: int) -> None:
        # Fired (a one-shot watch ends so), or the WAL went away: then its
        # directory's watch arms a new one when SQLite creates it again.
        # An arming that ends without firing wakes its DB, whose monitor arms
        # anew: the kernel queues a one-shot watch's event before it removes
        # the watch, and inotify_add_watch in between returns that same watch,
        # so the removal takes the new arming along and no write would wake
        # the DB until the fallback poll.
        fired, self.spent = self.spent, True
        if not fired and not self.watcher.stopping:
            self.wake()

    def on_queue_overflow(self) -> None:
        self.wake()


class _Directory(_Callback):
    """The callback for one directory: wakes a DB when its file or WAL appears or goes."""

    def __init__(self, watcher: WALWatcher, directory: str) -> None:
        self.watcher = watcher
        self.directory = directory
        self.targets: dict[str, Wake] = {}  # file name -> wake

    def on_event(self, event: Any) -> None:
        name = os.fsdecode(event.name)
        wake = self.targets.get(name)
        if wake is None:
            return
        if name.endswith("-wal") and event.mask & _APPEARED:
            self.watcher.watch_file(os.path.join(self.directory, name), wake)
        wake()

    def on_watch_deleted(self, wd: int) -> None:
        if self.watcher.stopping:
            return
        log.warning("stopped watching %s (removed): polling for its databases", self.directory)
        self.watcher.lost(self.directory)
        for wake in self.targets.values():
            wake()

    def on_queue_overflow(self) -> None:
        for wake in self.targets.values():
            wake()


class WALWatcher:
    """Wakes a DB whenever its WAL is written, or its database or WAL appears.

    ``pause`` says how long new events may wait before the reader wakes for
    them (a monitor still inside its spacing would only be scheduled anyway).
    """

    def __init__(self, pause: Pause = lambda: 0.0, sleep: Callable[[float], None] = time.sleep) -> None:
        self._pause = pause
        self._sleep = sleep  # the reader's pause; a test's to hold
        self._inotify: Any = None
        self.stopping = False  # closing the watches on shutdown is not a lost directory
        self._directories: dict[str, _Directory] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._watched: set[str] = set()  # DB paths with a directory watch
        self._armed: dict[str, _WakeOnWrite] = {}  # WAL path -> its current arming
        self._unwatched: set[str] = set()  # WAL paths inotify refused to watch

    def watch(self, db_path: str, wake: Wake) -> None:
        """Watch ``db_path``'s directory and WAL (see ``watching``)."""
        if self._inotify is None:
            return
        directory = os.path.dirname(db_path) or "."
        wal_path = db_path + "-wal"
        with self._lock:
            handler = self._directories.get(directory)
            if handler is None:
                handler = _Directory(self, directory)
                try:
                    self._add(directory, _DIR_MASK, handler)
                except OSError as exc:
                    log.warning("cannot watch %s (%s): polling for its databases", directory, exc)
                    return
                self._directories[directory] = handler
            for path in (db_path, wal_path):
                handler.targets[os.path.basename(path)] = wake
            self._watched.add(db_path)
        # After the directory watch: a WAL created in between is caught by it.
        self.watch_file(wal_path, wake)

    def arm(self, db_path: str) -> None:
        """Re-arm ``db_path``'s WAL watch if it fired since it was last armed.

        Call before reading the WAL: a write after this call wakes the DB again."""
        wal_path = db_path + "-wal"
        current = self._armed.get(wal_path)
        if current is not None and current.spent:
            self.watch_file(wal_path, current.wake)

    def watch_file(self, wal_path: str, wake: Wake) -> None:
        callback = _WakeOnWrite(self, wake)
        try:
            with self._lock:
                self._armed[wal_path] = callback
                self._add(wal_path, _FILE_MASK, callback)
        except FileNotFoundError:
            callback.spent = True  # not there yet: the directory watch reports its creation
        except OSError as exc:
            if wal_path not in self._unwatched:
                log.warning("cannot watch %s (%s): polling it instead", wal_path, exc)
            self._unwatched.add(wal_path)

    def lost(self, directory: str) -> None:
        with self._lock:
            self._directories.pop(directory, None)
            self._watched = {p for p in self._watched if (os.path.dirname(p) or ".") != directory}

    def watching(self, db_path: str) -> bool:
        """Whether inotify reports every write to ``db_path``'s WAL (else poll it)."""
        return db_path in self._watched and db_path + "-wal" not in self._unwatched

    def _add(self, path: str, mask: int, callback: object) -> None:
        """Add a watch; under self._lock, which stop() takes too."""
        if self._inotify is None:
            raise FileNotFoundError(path)  # stopped: as good as not there
        self._inotify.add_callback(os.fsencode(path), mask, callback, next(self._ids))

    def start(self) -> bool:
        """Start watching; False (and polling only) if the platform refuses."""
        if _InotifyFD is None:
            log.warning("cannot watch for wal changes (no inotify): polling instead")
            return False
        try:
            self._inotify = _BatchingInotify(self._pause, self._sleep)
            self._inotify.start()
        except OSError as exc:
            log.warning("cannot watch for wal changes (%s): polling instead", exc)
            self._inotify = None
            return False
        return True

    def stop(self) -> None:
        with self._lock:  # no monitor arms a watch from here on
            inotify, self._inotify = self._inotify, None
            self.stopping = True
        if inotify is not None:
            inotify.stop()
            inotify.join()


class _TreeDirectory(_Callback):
    """The callback for one directory of a replica tree: wakes on anything appearing in it."""

    def __init__(self, watcher: DirectoryWatcher, path: str, depth: int) -> None:
        self.watcher = watcher
        self.path = path
        self.depth = depth

    def on_event(self, event: Any) -> None:
        if event.mask & _IN.IN_ISDIR and self.depth > 0:
            self.watcher.add_tree(os.path.join(self.path, os.fsdecode(event.name)), self.depth - 1)
        self.watcher.wake()

    def on_watch_deleted(self, wd: int) -> None:
        pass  # a deleted generation: the follower finds out by listing

    def on_queue_overflow(self) -> None:
        self.watcher.wake()


class DirectoryWatcher:
    """Wakes a follower when a file appears under a file replica's ``generations/``
    (a generation, a snapshot or a WAL segment: writes end in a rename into place).

    Watches ``generations/`` and the two levels below it, adding directories as
    they appear. Without inotify it does nothing: the follower polls anyway.
    """

    # generations/ -> <generation>/ -> snapshots/, wal/
    DEPTH = 2

    def __init__(self, wake: Wake) -> None:
        self.wake = wake
        self._inotify: Any = None
        self._ids = itertools.count()
        self._lock = threading.Lock()

    def start(self, root: str) -> bool:
        if _InotifyFD is None:
            return False
        try:
            self._inotify = _BatchingInotify(lambda: 0.0, time.sleep)
            self._inotify.start()
        except OSError as exc:
            log.warning("cannot watch %s (%s): polling instead", root, exc)
            self._inotify = None
            return False
        self.add_tree(os.path.join(root, "generations"), self.DEPTH)
        return True

    def add_tree(self, path: str, depth: int) -> None:
        with self._lock:
            if self._inotify is None:
                return
            try:
                self._inotify.add_callback(
                    os.fsencode(path), _IN.IN_CREATE | _IN.IN_MOVED_TO, _TreeDirectory(self, path, depth), next(self._ids)
                )
            except OSError:
                return  # gone already, or not a directory
        if depth > 0:
            try:
                subdirs = [e.path for e in os.scandir(path) if e.is_dir()]
            except OSError:
                return
            for sub in subdirs:
                self.add_tree(sub, depth - 1)

    def stop(self) -> None:
        with self._lock:
            inotify, self._inotify = self._inotify, None
        if inotify is not None:
            inotify.stop()
            inotify.join()
