"""Change detection: wake a DB's monitor as soon as its WAL is written (inotify via watchdog).

One observer thread serves every database; each watched directory costs one
inotify watch. Where inotify is unavailable the monitor falls back to polling.
"""

from __future__ import annotations

import logging
import os
import threading

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

__all__ = ["WALWatcher"]

log = logging.getLogger(__name__)


class _Handler(FileSystemEventHandler):
    def __init__(self) -> None:
        self.targets: dict[str, threading.Event] = {}

    def on_any_event(self, event: FileSystemEvent) -> None:
        for path in (event.src_path, getattr(event, "dest_path", "")):
            wake = self.targets.get(os.fsdecode(path)) if path else None
            if wake is not None:
                wake.set()


class WALWatcher:
    """Sets a DB's wake event whenever its database or WAL file changes."""

    def __init__(self) -> None:
        self._observer = Observer()
        self._handlers: dict[str, _Handler] = {}
        self._started = False

    def watch(self, db_path: str, wake: threading.Event) -> None:
        directory = os.path.dirname(db_path)
        handler = self._handlers.get(directory)
        if handler is None:
            handler = self._handlers[directory] = _Handler()
            self._observer.schedule(handler, directory, recursive=False)
        for path in (db_path, db_path + "-wal"):
            handler.targets[path] = wake

    def start(self) -> bool:
        """Start watching; False (and polling only) if the platform refuses."""
        try:
            self._observer.start()
        except OSError as exc:
            log.warning("cannot watch for wal changes (%s): polling instead", exc)
            return False
        self._started = True
        return True

    def stop(self) -> None:
        if self._started:
            self._observer.stop()
            self._observer.join()
            self._started = False
