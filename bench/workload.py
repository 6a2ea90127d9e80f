"""The application side of the benchmark: databases and the writer that loads them.

The writer imitates OpenWEC's traffic (a bookmark upserted per events batch,
heartbeats flushed in one larger transaction) on an ordinary ``sqlite3``
connection configured as Litestream recommends (WAL, synchronous=NORMAL,
busy_timeout). Every transaction also rewrites the single row of ``tick`` with
its sequence number spelled as a marker (``#LSRB0000000042#``). A WAL segment
on the replica therefore names the last commit it carries: the largest marker
in its decompressed bytes (a frame holds a whole page, and the tick page is in
every commit). See ``watch.segment_marker``.

Run as a script it is the writer subprocess::

    python bench/workload.py DB OUT.npz --phase 20:200 --phase 15:0

Each ``--phase SECONDS:RATE`` runs at RATE transactions per second (0: as fast
as possible). With ``--rows N`` every transaction inserts N rows of
``BIG_ROW_CHARS`` into ``events`` instead (the stall scenario's saturating
writer: a few large transactions, tens of MiB of WAL per second). OUT.npz holds, per commit, its monotonic commit time, its
duration and its phase; commit ``i`` carries marker ``first_seq + i``.

Or it writes slices on demand, to several databases in turn (see ``serve``)::

    python bench/workload.py --serve A=a/app.db --serve B=b/app.db
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import sys
import time
from pathlib import Path

import numpy as np

MARKER_FORMAT = "#LSRB%010d#"
MARKER_PATTERN = rb"#LSRB(\d{10})#"
BUSY_TIMEOUT_MS = 5000
MACHINES = 1000
SUBSCRIPTIONS = 2
HEARTBEAT_EVERY = 50  # one heartbeat batch per this many transactions
BLOB_ROW_BYTES = 3000  # half random, half zeros: lz4 compresses these rows ~2:1
BIG_ROW_CHARS = 120  # a row of the big transactions' table (random hex: lz4 barely shrinks it)

SCHEMA = [
    "CREATE TABLE subscriptions (uuid TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, query TEXT NOT NULL)",
    """CREATE TABLE bookmarks (machine TEXT NOT NULL, subscription TEXT NOT NULL, bookmark TEXT NOT NULL,
        PRIMARY KEY (machine, subscription))""",
    """CREATE TABLE heartbeats (machine TEXT NOT NULL, subscription TEXT NOT NULL, ip TEXT NOT NULL,
        first_seen INTEGER, last_seen INTEGER, PRIMARY KEY (machine, subscription))""",
    "CREATE TABLE tick (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, marker TEXT NOT NULL)",
]


def open_app(path: str | Path) -> sqlite3.Connection:
    """An application connection as Litestream's documentation recommends."""
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


def _tick(conn: sqlite3.Connection, seq: int) -> None:
    conn.execute("UPDATE tick SET seq = ?, marker = ? WHERE id = 1", (seq, MARKER_FORMAT % seq))


def current_seq(path: str | Path) -> int:
    conn = sqlite3.connect(str(path))
    try:
        return int(conn.execute("SELECT seq FROM tick").fetchone()[0])
    finally:
        conn.close()


def _machines() -> list[str]:
    return [f"ws{i:04d}.corp.example" for i in range(MACHINES)]


def _subscriptions() -> list[str]:
    return [f"00000000-0000-4000-8000-{i:012d}" for i in range(SUBSCRIPTIONS)]


def seed(path: str | Path) -> None:
    """A fresh OpenWEC-like database: schema, subscriptions, one bookmark and heartbeat per client."""
    conn = open_app(path)
    try:
        conn.execute("BEGIN")
        for ddl in SCHEMA:
            conn.execute(ddl)
        subs = _subscriptions()
        conn.executemany("INSERT INTO subscriptions VALUES (?, ?, '<QueryList/>')",
                         [(s, f"sub-{i}") for i, s in enumerate(subs)])
        rows = [(m, s) for m in _machines() for s in subs]
        conn.executemany("INSERT INTO bookmarks VALUES (?, ?, '')", rows)
        conn.executemany("INSERT INTO heartbeats VALUES (?, ?, '10.0.0.1', 0, 0)", rows)
        conn.execute("INSERT INTO tick VALUES (1, 0, ?)", (MARKER_FORMAT % 0,))
        conn.execute("COMMIT")
    finally:
        conn.close()


class Writer:
    """The application: one connection, one transaction per step."""

    def __init__(self, path: str | Path, rng_seed: int = 1, rows: int = 0) -> None:
        self.conn = open_app(path)
        self.rng = random.Random(rng_seed)
        self.machines = _machines()
        self.subs = _subscriptions()
        self.seq = current_seq(path)
        self.rows = rows  # > 0: each step is one big transaction of that many rows
        self.waits = (0.0, 0.0)  # the last step's BEGIN IMMEDIATE and COMMIT, in seconds
        if rows:
            self.conn.execute("CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
            # A pool of payloads made once: the writer's time goes to SQLite, not to making them.
            self.payloads = [os.urandom(BIG_ROW_CHARS // 2).hex() for _ in range(4096)]

    def close(self) -> None:
        self.conn.close()

    def step(self) -> None:
        """One transaction: usually a bookmark upsert, every HEARTBEAT_EVERY-th a heartbeat batch."""
        self.seq += 1
        c = self.conn
        t0 = time.monotonic()
        c.execute("BEGIN IMMEDIATE")
        t1 = time.monotonic()
        if self.rows:
            start = self.rng.randrange(len(self.payloads))
            c.executemany("INSERT INTO events (body) VALUES (?)",
                          ((self.payloads[(start + i) % len(self.payloads)],) for i in range(self.rows)))
        elif self.seq % HEARTBEAT_EVERY == 0:
            now = time.time_ns() // 1_000_000
            c.executemany("UPDATE heartbeats SET last_seen = ? WHERE machine = ? AND subscription = ?",
                          [(now, m, s) for m in self.machines for s in self.subs])
        else:
            machine, sub = self.rng.choice(self.machines), self.rng.choice(self.subs)
            bookmark = (f'<BookmarkList><Bookmark Channel="Security" RecordId="{self.seq}" '
                        f'IsCurrent="true"/></BookmarkList>')
            c.execute("INSERT INTO bookmarks VALUES (?, ?, ?) ON CONFLICT (machine, subscription) "
                      "DO UPDATE SET bookmark = excluded.bookmark", (machine, sub, bookmark))
        _tick(c, self.seq)
        t2 = time.monotonic()
        c.execute("COMMIT")
        # The waits a sidecar can cause: for the write lock, and in COMMIT (the
        # WAL write, and the automatic checkpoint SQLite runs inside it).
        self.waits = (t1 - t0, time.monotonic() - t2)

    def run(self, phases: list[tuple[float, float]]) -> dict[str, np.ndarray]:
        """Run each (seconds, rate) phase; rate 0 means back to back."""
        first_seq = self.seq + 1
        t_commit: list[float] = []
        latency: list[float] = []
        waits: list[tuple[float, float]] = []
        phase_of: list[int] = []
        for phase, (seconds, rate) in enumerate(phases):
            period = 1.0 / rate if rate > 0 else 0.0
            start = time.monotonic()
            deadline, next_at = start + seconds, start
            while True:
                now = time.monotonic()
                if now >= deadline:
                    break
                if next_at > now:
                    time.sleep(next_at - now)
                t0 = time.monotonic()
                self.step()
                t1 = time.monotonic()
                t_commit.append(t1)
                latency.append(t1 - t0)
                waits.append(self.waits)
                phase_of.append(phase)
                # A stalled writer does not burst to catch up: clients would have waited too.
                next_at = max(next_at + period, t1) if period else t1
        return {
            "first_seq": np.array(first_seq),
            "t_commit": np.array(t_commit),
            "latency": np.array(latency),
            "begin_wait": np.array([w[0] for w in waits]),
            "commit_wait": np.array([w[1] for w in waits]),
            "phase": np.array(phase_of, dtype=np.int8),
        }


# -- the restore and idle benchmarks' databases ------------------------------------

def build_large(path: str | Path, mib: float) -> None:
    """An OpenWEC database plus a table of BLOB_ROW_BYTES rows: ``mib`` MiB in all, checkpointed."""
    seed(path)
    conn = open_app(path)
    try:
        conn.execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB NOT NULL)")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        half = BLOB_ROW_BYTES // 2
        while conn.execute("PRAGMA page_count").fetchone()[0] * page_size < mib * 1024 * 1024:
            conn.execute("BEGIN")
            rows = ((os.urandom(half) + bytes(half),) for _ in range(500))
            conn.executemany("INSERT INTO blobs (data) VALUES (?)", rows)
            conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def touch_blobs(conn: sqlite3.Connection, seq: int, rng: random.Random, rows: int = 4) -> None:
    """One small transaction on the large database: a few rows rewritten, and the tick."""
    n = conn.execute("SELECT max(id) FROM blobs").fetchone()[0]
    half = BLOB_ROW_BYTES // 2
    conn.execute("BEGIN IMMEDIATE")
    for _ in range(rows):
        conn.execute("UPDATE blobs SET data = ? WHERE id = ?", (os.urandom(half) + bytes(half), rng.randint(1, n)))
    _tick(conn, seq)
    conn.execute("COMMIT")


def make_idle(path: str | Path) -> None:
    """A small database in WAL mode with one committed transaction, as an idle service leaves it."""
    conn = open_app(path)
    try:
        conn.execute("CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT)")
        conn.execute("INSERT INTO kv VALUES ('created', datetime('now'))")
    finally:
        conn.close()


def serve(paths: dict[str, str], rng_seed: int) -> None:
    """Slices on demand, one writer per database kept open throughout: each stdin
    line ``NAME SECONDS`` runs back-to-back transactions on database NAME for that
    long, then answers ``COMMITS LAST_SEQ LONGEST_TXN ELAPSED`` on stdout (ELAPSED
    from the slice's start to its last commit). ``quit`` or end of input stops."""
    writers = {name: Writer(path, rng_seed) for name, path in paths.items()}
    try:
        for line in sys.stdin:
            if line.strip() == "quit":
                break
            name, seconds = line.split()
            writer = writers[name]
            t0 = time.monotonic()
            data = writer.run([(float(seconds), 0.0)])
            print(len(data["t_commit"]), writer.seq, float(data["latency"].max()),
                  float(data["t_commit"][-1]) - t0, flush=True)
    finally:
        for writer in writers.values():
            writer.close()


def _phase(text: str) -> tuple[float, float]:
    seconds, _, rate = text.partition(":")
    return float(seconds), float(rate or 0)


def _named(text: str) -> tuple[str, str]:
    name, _, path = text.partition("=")
    return name, path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("db", nargs="?")
    parser.add_argument("out", nargs="?")
    parser.add_argument("--phase", action="append", type=_phase, metavar="SECONDS:RATE")
    parser.add_argument("--serve", action="append", type=_named, metavar="NAME=DB",
                        help="write slices on demand to these databases instead (see serve())")
    parser.add_argument("--rng-seed", type=int, default=1)
    parser.add_argument("--rows", type=int, default=0, help="rows per transaction: big transactions instead")
    args = parser.parse_args()
    if args.serve:
        serve(dict(args.serve), args.rng_seed)
        return
    if not (args.db and args.out and args.phase):
        parser.error("DB, OUT and --phase are required unless --serve")
    writer = Writer(args.db, args.rng_seed, args.rows)
    try:
        result = writer.run(args.phase)
    finally:
        writer.close()
    np.savez(args.out, **result)


if __name__ == "__main__":
    main()
