"""Application workloads and comparison helpers for the end-to-end tests.

The workload imitates OpenWEC (a Windows Event Collector that keeps its state
in SQLite): subscriptions, a bookmark upserted for every events batch of every
client, heartbeats written in batches, and schema migrations applied to a live
database. Everything here drives real SQLite; nothing is mocked.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .config import write_config
from .procs import LSR, Processes, run_lsr, wait_for

from .sqlite import open_app_db

if TYPE_CHECKING:
    from litestream_py.encryption import AgeKeys

# Tables lsr creates in the application's database for its own bookkeeping.
LSR_TABLES = ("_litestream_seq", "_litestream_lock")

OPENWEC_SCHEMA = [
    """CREATE TABLE subscriptions (
        uuid TEXT NOT NULL UNIQUE,
        version TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL UNIQUE,
        uri TEXT,
        query TEXT NOT NULL,
        heartbeat_interval INTEGER,
        connection_retry_count INTEGER,
        connection_retry_interval INTEGER,
        max_time INTEGER,
        max_envelope_size INTEGER,
        enabled INTEGER,
        read_existing_events INTEGER,
        content_format TEXT,
        ignore_channel_error INTEGER,
        outputs TEXT NOT NULL,
        PRIMARY KEY (uuid))""",
    """CREATE TABLE bookmarks (
        machine TEXT NOT NULL,
        subscription TEXT NOT NULL
            REFERENCES subscriptions(uuid) ON UPDATE CASCADE ON DELETE CASCADE,
        bookmark TEXT NOT NULL,
        PRIMARY KEY (machine, subscription))""",
    """CREATE TABLE heartbeats (
        machine TEXT NOT NULL,
        ip TEXT NOT NULL,
        subscription TEXT NOT NULL
            REFERENCES subscriptions(uuid) ON UPDATE CASCADE ON DELETE CASCADE,
        first_seen INTEGER,
        last_seen INTEGER,
        last_event_seen INTEGER DEFAULT NULL,
        PRIMARY KEY (machine, subscription))""",
    """CREATE TABLE __schema_migrations (
        version INTEGER PRIMARY KEY,
        description TEXT NOT NULL,
        applied_on TEXT NOT NULL)""",
]

_QUERY = (
    '<QueryList><Query Id="0"><Select Path="Security">*[System[(EventID=4624 or EventID=4625)]]'
    "</Select></Query></QueryList>"
)


class OpenWEC:
    """One OpenWEC server's database traffic on an application connection."""

    def __init__(self, conn: sqlite3.Connection, clients: int = 50, subscriptions: int = 2) -> None:
        self.conn = conn
        self.machines = [f"ws{i:04d}.corp.example" for i in range(clients)]
        self.subscriptions: list[str] = []
        self.n_subscriptions = subscriptions
        self.batches = 0
        self.migrated = False

    def init(self) -> None:
        """`openwec db init` then `openwec subscriptions new` for each subscription."""
        c = self.conn
        c.execute("BEGIN")
        for ddl in OPENWEC_SCHEMA:
            c.execute(ddl)
        c.execute("INSERT INTO __schema_migrations VALUES (1, 'initial schema', datetime('now'))")
        c.execute("COMMIT")
        for i in range(self.n_subscriptions):
            self.add_subscription(f"sub-{i}")

    def add_subscription(self, name: str) -> None:
        sub = str(uuid.uuid4())
        self.conn.execute(
            "INSERT INTO subscriptions VALUES (?,?,?,?,?,3600,5,60,30,512000,1,0,'Raw',0,?)",
            (sub, str(uuid.uuid4()), name, f"/wec/{name}", _QUERY, '[{"driver":"Files","path":"/var/log/wec"}]'),
        )
        self.subscriptions.append(sub)

    def events_batch(self) -> None:
        """Every client sends one events batch per subscription: one upsert, one transaction each."""
        self.batches += 1
        for machine in self.machines:
            for sub in self.subscriptions:
                record = self.batches * 1000 + zlib.crc32(f"{machine}/{sub}".encode()) % 997
                self.conn.execute(
                    "INSERT INTO bookmarks (machine, subscription, bookmark) VALUES (?,?,?) "
                    "ON CONFLICT (machine, subscription) DO UPDATE SET bookmark = excluded.bookmark",
                    (machine, sub,
                     f'<BookmarkList><Bookmark Channel="Security" RecordId="{record}" IsCurrent="true"/>'
                     f"</BookmarkList>"),
                )

    def heartbeats_batch(self) -> None:
        """Heartbeats are flushed in one transaction at a fixed interval."""
        now = int(time.time() * 1000) + self.batches
        c = self.conn
        c.execute("BEGIN")
        for i, machine in enumerate(self.machines):
            for sub in self.subscriptions:
                c.execute(
                    "INSERT INTO heartbeats (machine, ip, subscription, first_seen, last_seen, last_event_seen) "
                    "VALUES (?,?,?,?,?,?) ON CONFLICT (machine, subscription) DO UPDATE SET "
                    "last_seen = excluded.last_seen, last_event_seen = excluded.last_event_seen",
                    (machine, f"10.0.{i // 250}.{i % 250 + 1}", sub, now, now, now),
                )
        c.execute("COMMIT")

    def migrate(self) -> None:
        """`openwec db upgrade`: a column, an index and a data fix in one transaction."""
        c = self.conn
        c.execute("BEGIN")
        c.execute("ALTER TABLE subscriptions ADD COLUMN locale TEXT")
        c.execute("ALTER TABLE heartbeats ADD COLUMN client_version TEXT DEFAULT 'unknown'")
        c.execute("CREATE INDEX idx_heartbeats_last_seen ON heartbeats (last_seen)")
        c.execute("CREATE INDEX idx_bookmarks_subscription ON bookmarks (subscription)")
        c.execute("UPDATE subscriptions SET locale = 'en-US'")
        c.execute("INSERT INTO __schema_migrations VALUES (2, 'locale, client_version', datetime('now'))")
        c.execute("COMMIT")
        self.migrated = True

    def round(self) -> None:
        self.events_batch()
        self.heartbeats_batch()


def user_tables(path: str | Path) -> list[str]:
    conn = sqlite3.connect(str(path))
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    finally:
        conn.close()
    return [n for n in names if n not in LSR_TABLES and not n.startswith("sqlite_")]


def dump(path: str | Path) -> dict[str, list[tuple[object, ...]]]:
    """Every application table row for row (lsr's own tables left out), plus the schema."""
    conn = sqlite3.connect(str(path))
    try:
        out: dict[str, list[tuple[object, ...]]] = {
            "sqlite_master": [
                r for r in conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name")
                if r[1] not in LSR_TABLES
            ]
        }
        for table in user_tables(path):
            cols = [r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')]
            order = ", ".join(f'"{c}"' for c in cols)
            out[table] = conn.execute(f'SELECT * FROM "{table}" ORDER BY {order}').fetchall()
    finally:
        conn.close()
    return out


def content_hash(path: str | Path) -> str:
    """A SHA-256 over the schema and every row of every application table."""
    h = hashlib.sha256()
    conn = sqlite3.connect(str(path))
    try:
        for table in user_tables(path):
            h.update(table.encode())
            for row in conn.execute(f'SELECT * FROM "{table}" ORDER BY rowid'):
                for value in row:
                    h.update(value if isinstance(value, bytes) else repr(value).encode())
                    h.update(b"\x00")
    finally:
        conn.close()
    return h.hexdigest()


def assert_same_data(source: str | Path, restored: str | Path) -> None:
    """The restored database equals the source table by table, and is intact."""
    from .sqlite import integrity_ok, rows

    assert integrity_ok(restored), f"integrity_check failed on {restored}"
    # No stale pages past the end: the file is exactly the size its header says.
    page_size, page_count = (rows(restored, f"PRAGMA {p}")[0][0] for p in ("page_size", "page_count"))
    assert os.path.getsize(restored) == page_size * page_count, f"{restored}: file size != page_count * page_size"
    a, b = dump(source), dump(restored)
    assert sorted(a) == sorted(b), f"tables differ: {sorted(a)} vs {sorted(b)}"
    for table in a:
        assert len(a[table]) == len(b[table]), f"{table}: {len(a[table])} rows in source, {len(b[table])} restored"
        assert a[table] == b[table], f"{table}: rows differ"


class Writer(threading.Thread):
    """Runs ``step`` in a loop on its own thread until stopped; keeps the first error."""

    def __init__(self, step: Callable[[int], None], pause: float = 0.0) -> None:
        super().__init__(name="app-writer", daemon=True)
        self.step = step
        self.pause = pause
        self.count = 0
        self.error: BaseException | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            while not self._stop_event.is_set():
                self.step(self.count)
                self.count += 1
                if self.pause:
                    self._stop_event.wait(self.pause)
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def stop(self) -> int:
        self._stop_event.set()
        self.join(timeout=60)
        assert not self.is_alive(), "writer did not stop"
        if self.error is not None:
            raise self.error
        return self.count


# -- age keys for encrypted replicas ------------------------------------------------

AGE_MAGIC = b"age-encryption.org/v1"


class AgeKeyPair:
    """A fresh age key pair made at test time (never a real secret)."""

    def __init__(self) -> None:
        from pyrage import x25519

        identity = x25519.Identity.generate()
        self.identity = str(identity)
        self.recipient = str(identity.to_public())

    def yaml(self, identities: bool = True, recipients: bool = True, indent: int = 8) -> str:
        """The replica's ``age:`` block, as config lines."""
        pad = " " * indent
        lines = [f"{pad}age:"]
        if identities:
            lines.append(f"{pad}  identities: [{self.identity}]")
        if recipients:
            lines.append(f"{pad}  recipients: [{self.recipient}]")
        return "\n".join(lines) + "\n"

    def keys(self) -> "AgeKeys":
        """The engine's keys for this pair (to read the replica in-process)."""
        from pyrage import x25519

        from litestream_py.encryption import AgeKeys

        return AgeKeys([x25519.Identity.from_str(self.identity)], [x25519.Recipient.from_str(self.recipient)])

    def flow(self) -> str:
        """The ``age:`` value as one YAML flow mapping (for write_s3_config's replica keys)."""
        return f"{{identities: [{self.identity}], recipients: [{self.recipient}]}}"

    def assert_absent(self, *texts: str) -> None:
        """The secret key appears in none of ``texts`` (logs, error lines)."""
        for text in texts:
            assert self.identity not in text, "the age secret key leaked into output"
            assert self.identity[:20] not in text, "part of the age secret key leaked into output"


def replica_objects(replica: Path) -> list[Path]:
    return sorted(replica.rglob("*.lz4"))


def assert_encrypted(replica: Path, *plaintexts: bytes) -> int:
    """Every snapshot and segment is age-encrypted, none holds ``plaintexts``; returns the count."""
    objects = replica_objects(replica)
    assert objects, f"no objects in {replica}"
    for path in objects:
        blob = path.read_bytes()
        assert blob.startswith(AGE_MAGIC), f"{path} is not age-encrypted"
        for text in plaintexts:
            assert text not in blob, f"{path} holds plaintext {text!r}"
    return len(objects)


# -- lsr process helpers ------------------------------------------------------

def rollback_db(path: Path) -> None:
    """A database in the default (rollback journal) mode, one table t with one row."""
    conn = sqlite3.connect(str(path))
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("INSERT INTO t (v) VALUES ('kept')")
    conn.commit()
    conn.close()


def meta_dir(db: Path) -> Path:
    return db.parent / f".{db.name}-litestream"


def local_generation(db: Path) -> str:
    try:
        return (meta_dir(db) / "generation").read_text().strip()
    except FileNotFoundError:
        return ""


def replica_generations(replica: Path) -> list[str]:
    d = replica / "generations"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def segment_count(replica: Path, generation: str | None = None) -> int:
    return len(segment_names(replica, generation))


def segment_names(replica: Path, generation: str | None = None) -> set[str]:
    gens = [generation] if generation else replica_generations(replica)
    return {f"{g}/{p.name}" for g in gens for p in (replica / "generations" / g / "wal").glob("*.wal.lz4")}


def shipped_since(replica: Path, before: set[str]) -> int:
    """Segments shipped since ``before`` (segment_names) was taken. Counted by new names,
    not by count: compaction merges old segments into the first one's name meanwhile."""
    return len(segment_names(replica) - before)


def wal_indexes(replica: Path, generation: str) -> set[int]:
    return {int(p.name[:8], 16) for p in (replica / "generations" / generation / "wal").glob("*.wal.lz4")}


def replica_ready(replica: Path) -> bool:
    """A generation with a snapshot exists on the replica."""
    return any((replica / "generations" / g / "snapshots").glob("*.snapshot.lz4") for g in replica_generations(replica))


def wait_ready(p: subprocess.Popen[bytes], replica: Path, timeout: float = 30) -> None:
    def ready() -> bool:
        assert p.poll() is None, f"{Path(str(p.args[0])).name} exited early ({p.returncode}):\n{Processes.output(p)}"
        return replica_ready(replica)

    wait_for(ready, timeout=timeout, what=f"a snapshot in {replica}")


def catches_sigterm(pid: int) -> bool:
    """Whether the process has installed a SIGTERM handler (SigCgt in /proc/PID/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    caught = int(re.search(r"^SigCgt:\s*([0-9a-f]+)$", status, re.M).group(1), 16)  # type: ignore[union-attr]
    return bool(caught & (1 << (signal.SIGTERM - 1)))


def stop_lsr(p: subprocess.Popen[bytes], timeout: float = 60) -> str:
    """SIGTERM lsr; it must exit 0 after its final sync, with no traceback or error."""
    code = Processes.stop(p, signal.SIGTERM, timeout=timeout)
    out = Processes.output(p)
    assert code == 0, f"lsr exited {code}:\n{out}"
    assert "Traceback" not in out, out
    assert not re.search(r"\b(ERROR|CRITICAL)\b", out), out
    return out


def write_stop_and_restore(app: sqlite3.Connection, p: subprocess.Popen[bytes], db: Path, replica: Path) -> None:
    """One more commit, a clean stop of lsr, and a restore of the file replica that holds everything."""
    app.execute("INSERT INTO t (v) VALUES ('last')")
    stop_lsr(p)
    app.close()
    restored = replica.parent / "restored.db"
    restore(f"file://{replica}", restored)
    assert_same_data(db, restored)


def restore(replica_url: str, out: Path, *extra: str) -> None:
    res = run_lsr("restore", "-o", str(out), *extra, replica_url)
    assert res.returncode == 0, f"lsr restore failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    assert out.exists()


def new_generation_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "new generation" in line]


def wait_synced(db: Path, replica: Path, timeout: float = 30, config: Path | None = None) -> None:
    """Wait until a restore of the replica holds everything the source holds now
    (through ``config``'s replica of ``db`` when given: an encrypted one needs its identity)."""
    want = dump(db)
    tmp = db.parent / "probe"
    tmp.mkdir(exist_ok=True)
    n = [0]

    def caught_up() -> bool:
        n[0] += 1
        out = tmp / f"probe-{n[0]}.db"
        source = ["-config", str(config), str(db)] if config else [f"file://{replica}"]
        res = run_lsr("restore", "-o", str(out), *source)
        if res.returncode != 0:
            return False
        try:
            return dump(out) == want
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(str(out) + suffix).unlink(missing_ok=True)

    wait_for(caught_up, timeout=timeout, interval=0.2, what="the replica to catch up")


__all__ = [
    "AGE_MAGIC", "AgeKeyPair", "assert_encrypted", "replica_objects",
    "LSR", "LSR_TABLES", "OpenWEC", "catches_sigterm", "Writer", "assert_same_data", "content_hash", "dump", "local_generation",
    "meta_dir", "new_generation_lines", "open_app_db", "replica_generations", "replica_ready", "restore",
    "segment_count", "stop_lsr", "wait_ready", "wait_synced", "wal_indexes", "user_tables", "WriterProcess",
]


# A writer in a process of its own (SQLite's locks are per process): one
# committed row per line read, acknowledged once committed.
WRITER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, body TEXT)")
for line in sys.stdin:
    conn.execute("INSERT INTO t (id, body) VALUES (?, randomblob(200))", (int(line),))
    print("ok", flush=True)
"""


class WriterProcess:
    def __init__(self, db: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def insert(self, row_id: int) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{row_id}\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok"

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def sidecar_on_new_db(
    tmp_path: Path, procs: Processes, replica_settings: dict[str, object]
) -> tuple[sqlite3.Connection, Path, subprocess.Popen[bytes]]:
    """A WAL-mode app.db with table t, replicated by `lsr replicate` to a file replica in
    tmp_path/replica with ``replica_settings`` (its config keys). Returns (conn, db, lsr)."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    config = write_config(tmp_path / "lsr.yml", db, {"url": f"file://{tmp_path / 'replica'}", **replica_settings})
    return conn, db, procs.lsr_replicate("-config", str(config))


def start_lsr(procs: Processes, tmp_path: Path, db: Path, replica: Path, mode: str, **db_settings: Any
              ) -> subprocess.Popen[bytes]:
    if mode == "url":
        return procs.lsr_replicate(str(db), f"file://{replica}")
    cfg = write_config(tmp_path / "litestream.yml", db, f"file://{replica}", **db_settings)
    return procs.lsr_replicate("-config", str(cfg))
