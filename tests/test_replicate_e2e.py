"""End-to-end replication: a real application writes, a real ``lsr replicate`` runs, ``lsr restore`` recovers.

No SQLite or file-system behaviour is mocked: the application is a real SQLite
connection, lsr runs as a subprocess and is stopped with real signals, and
every restored database is compared row for row with its source.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.config import write_config
from support.procs import Processes, run_lsr, stop_process, wait_for
from support.sqlite import integrity_ok, open_app_db, rows
from support.workload import (
    OpenWEC,
    Writer,
    assert_same_data,
    content_hash,
    dump,
    local_generation,
    meta_dir,
    new_generation_lines,
    replica_generations,
    restore,
    segment_names,
    shipped_since,
    start_lsr,
    stop_lsr,
    wait_ready,
    wait_synced,
    wal_indexes,
    write_stop_and_restore,
)

ROUNDS = 24


# -- 1. an OpenWEC-like application ----------------------------------------------

@pytest.mark.parametrize("mode", ["url", "config"])
def test_openwec_workload_is_restored_row_for_row(tmp_path: Path, procs: Processes, mode: str) -> None:
    """Bookmarks upserted per events batch for 50 clients, heartbeats in batches and a
    schema migration midway, all while lsr runs; SIGTERM, restore, compare."""
    db, replica = tmp_path / "openwec.sqlite", tmp_path / "replica"
    app = open_app_db(db)
    wec = OpenWEC(app, clients=50)
    wec.init()
    # The config run checkpoints often, so the workload spans several WAL indexes.
    p = start_lsr(procs, tmp_path, db, replica, mode, **{"monitor-interval": "100ms", "min-checkpoint-page-count": 64})
    wait_ready(p, replica)

    for r in range(ROUNDS):
        wec.round()
        if r == ROUNDS // 2:
            wec.migrate()
            # A restore taken while the application writes is a consistent database.
            mid = tmp_path / "mid.db"
            restore(f"file://{replica}", mid)
            assert integrity_ok(mid)
    if mode == "config":
        # lsr's scheduled checkpoints give way to a busy writer, so how many land
        # during the workload depends on timing (3-6 WAL indexes; once 2 under CI
        # load). Rounds spaced out let the next one through.
        (generation,) = replica_generations(replica)
        deadline = time.monotonic() + 20
        while len(wal_indexes(replica, generation)) <= 2:
            assert time.monotonic() < deadline, "lsr never checkpointed: the test lost its point"
            wec.round()  # ~100 frames: past min-checkpoint-page-count
            time.sleep(0.3)
    out = stop_lsr(p)
    assert "shutting down" in out
    app.close()

    restored = tmp_path / "restored.db"
    restore(f"file://{replica}", restored)
    assert_same_data(db, restored)
    assert rows(restored, "SELECT COUNT(*) FROM bookmarks") == [(100,)]
    assert rows(restored, "SELECT MAX(version) FROM __schema_migrations") == [(2,)]
    assert rows(restored, "SELECT COUNT(*) FROM heartbeats WHERE client_version = 'unknown'") == [(100,)]
    assert rows(restored, "SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'idx_%' ORDER BY 1") == [
        ("idx_bookmarks_subscription",), ("idx_heartbeats_last_seen",)]
    assert len(replica_generations(replica)) == 1


# -- 2. the application checkpoints by itself ----------------------------------

@pytest.mark.parametrize("mode", ["url", "config"])
def test_application_truncate_checkpoints(tmp_path: Path, procs: Processes, mode: str) -> None:
    """The application runs PRAGMA wal_checkpoint(TRUNCATE) after every batch while lsr runs."""
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    app = open_app_db(db)
    wec = OpenWEC(app, clients=20)
    wec.init()
    # Another connection of the application, with a short busy timeout so that a
    # checkpoint lsr's read lock blocks gives up quickly.
    checkpointer = sqlite3.connect(str(db), isolation_level=None, timeout=0.05)
    p = start_lsr(procs, tmp_path, db, replica, mode, **{"monitor-interval": "50ms", "min-checkpoint-page-count": 16})
    wait_ready(p, replica)

    outcomes = []
    for r in range(ROUNDS):
        wec.round()
        if r == 5:
            wec.migrate()
        outcomes.append(checkpointer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone())
        checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    checkpointer.close()
    stop_lsr(p)
    app.close()

    restored = tmp_path / "restored.db"
    restore(f"file://{replica}", restored)
    assert_same_data(db, restored)
    print("application TRUNCATE outcomes (busy, log, checkpointed):", outcomes)


# -- 3. crashes ----------------------------------------------------------------

def _ids_are_a_prefix(path: Path) -> int:
    ids = [r[0] for r in rows(path, "SELECT id FROM events ORDER BY id")]
    assert ids == list(range(1, len(ids) + 1)), "restored rows are not a prefix of the application's commits"
    return len(ids)


def test_sigkill_mid_load_then_restart(tmp_path: Path, procs: Processes) -> None:
    """SIGKILL lsr while the application writes, restart it, repeat; nothing committed is lost."""
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    app = open_app_db(db)
    app.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, batch INTEGER, payload BLOB)")

    def step(i: int) -> None:
        if i % 10 == 0:  # now and then a larger, multi-page transaction
            app.execute("BEGIN")
            for _ in range(20):
                app.execute("INSERT INTO events (batch, payload) VALUES (?, randomblob(900))", (i,))
            app.execute("COMMIT")
        else:
            app.execute("INSERT INTO events (batch, payload) VALUES (?, randomblob(100 + ?))", (i, i % 500))

    writer = Writer(step, pause=0.001)
    writer.start()
    settings = {"monitor-interval": "50ms", "min-checkpoint-page-count": 100}
    outcomes = []
    previous = ""
    try:
        for cycle in range(4):
            p = start_lsr(procs, tmp_path, db, replica, "config", **settings)
            wait_ready(p, replica)
            if cycle:
                # Resumed, or started a new generation and said why.
                gen = local_generation(db)
                lines = new_generation_lines(Processes.output(p))
                if gen == previous:
                    assert not lines, lines
                    outcomes.append("resumed")
                else:
                    assert any(gen in line and re.search(r"\(.+\)", line) for line in lines), lines
                    outcomes.append("new generation: " + lines[-1].split("(", 1)[1].rstrip(")"))
            n = segment_names(replica)
            wait_for(lambda: shipped_since(replica, n) >= 5, timeout=30, what="segments after the restart")
            if cycle == 3:
                break
            assert stop_process(p, signal.SIGKILL, timeout=10) == -signal.SIGKILL
            previous = local_generation(db)
            # What a crash leaves behind restores to a prefix of what the application committed.
            crashed = tmp_path / f"crashed-{cycle}.db"
            restore(f"file://{replica}", crashed)
            assert integrity_ok(crashed)
            assert 0 < _ids_are_a_prefix(crashed) <= rows(db, "SELECT COUNT(*) FROM events")[0][0]
    finally:
        written = writer.stop()
    stop_lsr(p)
    app.close()
    assert written > 100

    restored = tmp_path / "restored.db"
    restore(f"file://{replica}", restored)
    assert_same_data(db, restored)
    assert _ids_are_a_prefix(restored) == rows(db, "SELECT COUNT(*) FROM events")[0][0]
    print("restart outcomes:", outcomes)


def test_failed_final_sync_is_a_non_zero_exit(tmp_path: Path, procs: Processes) -> None:
    """Commits that could not be shipped at shutdown must show in the exit status."""
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    app = open_app_db(db)
    app.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    p = procs.lsr_replicate(str(db), f"file://{replica}")
    wait_ready(p, replica)
    replica.rename(tmp_path / "replica.moved")
    replica.write_text("the replica's disk is gone")
    for i in range(10):
        app.execute("INSERT INTO t (v) VALUES (?)", (str(i),))
    wait_for(lambda: "WARNING" in Processes.output(p), what="lsr to notice the broken replica")
    code = Processes.stop(p, signal.SIGTERM, timeout=60)
    out = Processes.output(p)
    assert "final sync" in out and "Traceback" not in out, out
    assert code != 0, f"exit 0 although the final sync failed:\n{out}"
    app.close()


# -- 4. resuming a generation ---------------------------------------------------

def _generations_listed(replica: Path) -> list[str]:
    res = run_lsr("generations", f"file://{replica}")
    assert res.returncode == 0, res.stderr
    return [line.split()[1] for line in res.stdout.splitlines()[1:]]


def test_restart_resumes_generation_when_continuity_is_provable(tmp_path: Path, procs: Processes) -> None:
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    app = open_app_db(db)  # stays open: the WAL survives while lsr is down
    app.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    app.execute("INSERT INTO t (v) VALUES ('before')")
    p = procs.lsr_replicate(str(db), f"file://{replica}")
    wait_ready(p, replica)
    stop_lsr(p)
    generation = local_generation(db)
    assert generation and _generations_listed(replica) == [generation]

    # Restart with nothing written meanwhile: same generation.
    p = procs.lsr_replicate(str(db), f"file://{replica}")
    shipped = segment_names(replica)
    app.execute("INSERT INTO t (v) VALUES ('during 2nd run')")
    wait_for(lambda: shipped_since(replica, shipped) > 0, what="the 2nd run to ship the write")
    out = stop_lsr(p)
    assert not new_generation_lines(out), out
    assert local_generation(db) == generation

    # The application writes while lsr is down: lsr picks up where it left off.
    for i in range(50):
        app.execute("INSERT INTO t (v) VALUES (?)", (f"while down {i}",))
    p = procs.lsr_replicate(str(db), f"file://{replica}")
    shipped = segment_names(replica)
    app.execute("INSERT INTO t (v) VALUES ('during 3rd run')")
    wait_for(lambda: shipped_since(replica, shipped) > 0, what="the 3rd run to ship the writes")
    out = stop_lsr(p)
    assert not new_generation_lines(out), out
    assert local_generation(db) == generation
    assert _generations_listed(replica) == [generation]

    restored = tmp_path / "restored.db"
    restore(f"file://{replica}", restored)
    assert_same_data(db, restored)
    app.close()


@pytest.mark.parametrize("while_down", ["truncate", "close"])
def test_restart_after_wal_reset_starts_new_generation(tmp_path: Path, procs: Processes, while_down: str) -> None:
    """The WAL checkpoint-truncated (or deleted by the last connection's close) while lsr was down
    breaks continuity: lsr logs a new generation and why, and the restore is still complete."""
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    app = open_app_db(db)
    app.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    for i in range(20):
        app.execute("INSERT INTO t (v) VALUES (?)", (f"row {i}",))
    p = procs.lsr_replicate(str(db), f"file://{replica}")
    wait_ready(p, replica)
    stop_lsr(p)
    generation = local_generation(db)

    app.execute("INSERT INTO t (v) VALUES ('while down')")
    if while_down == "truncate":
        assert app.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone() == (0, 0, 0)
        assert os.path.getsize(str(db) + "-wal") == 0
    else:
        app.close()
        assert not os.path.exists(str(db) + "-wal")
        app = open_app_db(db)
    app.execute("INSERT INTO t (v) VALUES ('after the reset')")

    p = procs.lsr_replicate(str(db), f"file://{replica}")
    wait_for(lambda: local_generation(db) != generation, what="a new generation")
    app.execute("INSERT INTO t (v) VALUES ('in the new generation')")
    out = stop_lsr(p)
    lines = new_generation_lines(out)
    assert len(lines) == 1 and local_generation(db) in lines[0] and re.search(r"\(.+\)", lines[0]), out
    assert sorted(_generations_listed(replica)) == sorted([generation, local_generation(db)])

    restored = tmp_path / "restored.db"
    restore(f"file://{replica}", restored)
    assert_same_data(db, restored)
    app.close()


# -- 5. a database that does not exist yet -----------------------------------------

def test_missing_database_is_waited_for(tmp_path: Path, procs: Processes) -> None:
    db, replica = tmp_path / "late.db", tmp_path / "replica"
    p = start_lsr(procs, tmp_path, db, replica, "config", **{"monitor-interval": "50ms"})
    wait_for(lambda: "does not exist" in Processes.output(p), what="the waiting message")
    # Many monitor intervals later, still one line and no replica yet.
    time.sleep(1.0)
    assert p.poll() is None, Processes.output(p)
    waiting = [line for line in Processes.output(p).splitlines() if "does not exist" in line]
    assert len(waiting) == 1, waiting
    assert not replica.exists()

    app = open_app_db(db)
    app.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    for i in range(10):
        app.execute("INSERT INTO t (v) VALUES (?)", (str(i),))
    wait_ready(p, replica)
    write_stop_and_restore(app, p, db, replica)


def test_exec_runs_the_application_and_stops_with_it(tmp_path: Path) -> None:
    """-exec: lsr runs the command, and when it exits ships its last commit and exits with its code."""
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    app = open_app_db(db)
    app.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    app.close()
    script = tmp_path / "app.py"
    script.write_text(
        "import sqlite3, sys, time\n"
        f"conn = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
        "for i in range(50):\n"
        "    conn.execute('INSERT INTO t (v) VALUES (?)', (str(i),))\n"
        "    time.sleep(0.01)\n"
        "conn.close()\n"
        "sys.exit(3)\n"
    )
    res = run_lsr("replicate", "-exec", f"{sys.executable} {script}", str(db), f"file://{replica}", timeout=60)
    assert res.returncode == 3, res.stdout + res.stderr
    assert "subprocess exited with 3" in res.stdout + res.stderr
    restored = tmp_path / "restored.db"
    restore(f"file://{replica}", restored)
    assert rows(restored, "SELECT COUNT(*) FROM t") == [(50,)]
    assert_same_data(db, restored)


def test_missing_parent_directory_is_an_error(tmp_path: Path) -> None:
    db = tmp_path / "no-such-dir" / "app.db"
    res = run_lsr("replicate", str(db), f"file://{tmp_path / 'replica'}", timeout=30)
    assert res.returncode != 0
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "no-such-dir" in res.stderr and "Traceback" not in res.stderr + res.stdout
    assert not (tmp_path / "replica").exists()


# -- 5b. an application holding the write lock while lsr opens the database -------------

@pytest.mark.parametrize("when", ["at_start", "when_created"])
def test_write_lock_held_while_lsr_opens(tmp_path: Path, procs: Processes, when: str) -> None:
    """A transaction longer than lsr's busy timeout is normal application behaviour: lsr must
    wait it out (at most a one-line warning), never crash or log a traceback."""
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    if when == "when_created":
        p = procs.lsr_replicate(str(db), f"file://{replica}")
        wait_for(lambda: "does not exist" in Processes.output(p), what="the waiting message")
    app = open_app_db(db)
    app.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    app.execute("BEGIN IMMEDIATE")
    app.execute("INSERT INTO t (v) VALUES ('in a long transaction')")
    if when == "at_start":
        p = procs.lsr_replicate(str(db), f"file://{replica}")
    # Hold the write lock well past lsr's one-second busy timeout (twice over).
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        assert p.poll() is None, f"lsr exited {p.returncode}:\n{Processes.output(p)}"
        time.sleep(0.05)
    app.execute("COMMIT")
    app.execute("INSERT INTO t (v) VALUES ('after')")
    wait_ready(p, replica)
    out = stop_lsr(p)  # exit 0, no traceback, no ERROR line
    assert len([line for line in out.splitlines() if "WARNING" in line]) <= 1, out
    app.close()
    restored = tmp_path / "restored.db"
    restore(f"file://{replica}", restored)
    assert_same_data(db, restored)


# -- more of what applications do ---------------------------------------------------

def test_vacuum_and_cascading_delete_shrink_the_restore(tmp_path: Path, procs: Processes) -> None:
    """A subscription deleted (cascading to its bookmarks and heartbeats), then VACUUM:
    the database file shrinks, and so must the restored one."""
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    app = open_app_db(db)
    app.execute("PRAGMA foreign_keys = ON")
    wec = OpenWEC(app, clients=50, subscriptions=4)
    wec.init()
    p = start_lsr(procs, tmp_path, db, replica, "config", **{"monitor-interval": "50ms",
                                                             "min-checkpoint-page-count": 32})
    wait_ready(p, replica)
    for _ in range(4):
        wec.round()
    app.execute("CREATE TABLE scratch (data BLOB)")
    app.execute("INSERT INTO scratch SELECT randomblob(4000) FROM generate_series(1, 300)"
                if sqlite3.sqlite_version_info >= (3, 46) else
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300) "
                "INSERT INTO scratch SELECT randomblob(4000) FROM n")
    pages_before = rows(db, "PRAGMA page_count")[0][0]
    app.execute("DELETE FROM subscriptions WHERE uuid = ?", (wec.subscriptions.pop(0),))
    app.execute("DROP TABLE scratch")
    app.execute("VACUUM")
    wec.round()
    pages_after = rows(db, "PRAGMA page_count")[0][0]
    assert pages_after < pages_before - 250
    stop_lsr(p)
    app.close()

    restored = tmp_path / "restored.db"
    restore(f"file://{replica}", restored)
    assert_same_data(db, restored)
    assert rows(restored, "PRAGMA page_count") == [(pages_after,)]
    assert rows(restored, "SELECT COUNT(*) FROM bookmarks") == [(150,)]


def _committed_frames(db: Path) -> int:
    """mxFrame, at offset 16 of the wal-index header in -shm.

    Read from another process: closing any descriptor of -shm in this process
    would drop the POSIX locks this process's SQLite connections hold on it.
    """
    code = f"import struct; print(struct.unpack('=I', open({str(db) + '-shm'!r}, 'rb').read(20)[16:])[0])"
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def test_rolled_back_transactions_spilled_to_the_wal(tmp_path: Path, procs: Processes) -> None:
    """A transaction bigger than the page cache spills uncommitted frames into the WAL; rolled back,
    they must never reach the replica, and the frames that overwrite them must."""
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    app = open_app_db(db)
    app.execute("PRAGMA cache_size = 10")  # pages: spill early
    app.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
    p = start_lsr(procs, tmp_path, db, replica, "config", **{"monitor-interval": "20ms"})
    wait_ready(p, replica)
    frame_size = 24 + rows(db, "PRAGMA page_size")[0][0]
    for round_ in range(5):
        app.execute("BEGIN")
        for _ in range(200):
            app.execute("INSERT INTO t (v) VALUES (randomblob(3000))")
        spilled = (os.path.getsize(f"{db}-wal") - 32) // frame_size - _committed_frames(db)
        assert spilled > 100, "no spill: the test lost its point"
        time.sleep(0.1)  # let lsr look at the WAL while the spilled frames sit there
        app.execute("ROLLBACK")
        for i in range(3):
            app.execute("INSERT INTO t (v) VALUES (?)", (f"committed {round_}.{i}".encode(),))
    stop_lsr(p)
    app.close()
    restored = tmp_path / "restored.db"
    restore(f"file://{replica}", restored)
    assert_same_data(db, restored)
    assert rows(restored, "SELECT COUNT(*) FROM t") == [(15,)]


def test_long_reader_pins_the_wal_then_lets_go(tmp_path: Path, procs: Processes) -> None:
    """An application read transaction keeps lsr's checkpoints partial; the WAL restarts once it ends."""
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    app = open_app_db(db)
    wec = OpenWEC(app, clients=30)
    wec.init()
    p = start_lsr(procs, tmp_path, db, replica, "config", **{"monitor-interval": "50ms",
                                                             "min-checkpoint-page-count": 16})
    wait_ready(p, replica)
    reader = open_app_db(db)
    reader.execute("BEGIN")
    assert reader.execute("SELECT COUNT(*) FROM subscriptions").fetchone() == (2,)
    (generation,) = replica_generations(replica)
    # A reader that began on a fully checkpointed WAL reads the database file
    # alone and lets the WAL restart once more, at the first round's write at
    # the latest; from then on it blocks every backfill. So the index is pinned
    # from the second round on (what is shipped after the first may still be the
    # end of the index before the restart).
    pinned = -1
    for i in range(5):
        shipped = segment_names(replica)
        wec.round()
        wait_for(lambda: shipped_since(replica, shipped) > 0, what="the round to be shipped")
        if i == 1:
            pinned = max(wal_indexes(replica, generation))
    # The reader's snapshot holds, so no checkpoint could finish: still the same WAL index.
    assert reader.execute("SELECT COUNT(*) FROM bookmarks").fetchone() == (0,)
    assert max(wal_indexes(replica, generation)) == pinned
    reader.execute("COMMIT")
    for _ in range(4):
        wec.round()
    wait_for(lambda: max(wal_indexes(replica, generation)) > pinned, what="a WAL restart after the reader left")
    stop_lsr(p)
    reader.close()
    app.close()
    restored = tmp_path / "restored.db"
    restore(f"file://{replica}", restored)
    assert_same_data(db, restored)


def test_replica_unwritable_then_repaired(tmp_path: Path, procs: Processes) -> None:
    """A file where the replica directory should be: lsr warns (one line), keeps running, and
    catches up once the path is repaired."""
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    replica.write_text("in the way")
    app = open_app_db(db)
    app.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    p = procs.lsr_replicate(str(db), f"file://{replica}")
    wait_for(lambda: "WARNING" in Processes.output(p), what="a warning about the replica")
    for i in range(20):
        app.execute("INSERT INTO t (v) VALUES (?)", (f"while broken {i}",))
    assert p.poll() is None
    replica.unlink()
    wait_ready(p, replica)
    for i in range(20):
        app.execute("INSERT INTO t (v) VALUES (?)", (f"after repair {i}",))
    out = stop_lsr(p)
    assert "Traceback" not in out
    warnings = [line for line in out.splitlines() if "WARNING" in line]
    assert len(warnings) == 1, warnings  # logged once, not once per retry
    restored = tmp_path / "restored.db"
    restore(f"file://{replica}", restored)
    assert_same_data(db, restored)


def test_several_databases_and_disaster_recovery(tmp_path: Path, procs: Processes) -> None:
    """Two databases in one config; both are lost; `lsr restore -config CFG DB` brings each back
    at its own path."""
    dbs = [tmp_path / "a" / "one.db", tmp_path / "b" / "two.db"]
    cfg = write_config(tmp_path / "litestream.yml", {db: [f"file://{tmp_path / 'backups' / db.stem}"] for db in dbs})
    apps = []
    for db in dbs:
        db.parent.mkdir()
        app = open_app_db(db)
        OpenWEC(app, clients=10).init()
        apps.append(app)
    p = procs.lsr_replicate("-config", str(cfg))
    for db in dbs:
        wait_ready(p, tmp_path / "backups" / db.stem)
    for app in apps:
        wec = OpenWEC(app, clients=10)
        wec.subscriptions = [r[0] for r in app.execute("SELECT uuid FROM subscriptions")]
        for _ in range(3):
            wec.round()
    stop_lsr(p)
    for app in apps:
        app.close()
    expected = {db: dump(db) for db in dbs}

    for db in dbs:  # the disaster
        shutil.rmtree(db.parent)
        db.parent.mkdir()
    for db in dbs:
        res = run_lsr("restore", "-config", str(cfg), str(db))
        assert res.returncode == 0, res.stderr
        assert integrity_ok(db)
        assert dump(db) == expected[db]
    # Restoring again refuses to overwrite; -if-db-not-exists makes that a no-op.
    assert run_lsr("restore", "-config", str(cfg), str(dbs[0])).returncode == 1
    assert run_lsr("restore", "-config", str(cfg), "-if-db-not-exists", str(dbs[0])).returncode == 0


def _threads_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^Threads:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]


def test_many_databases_share_a_small_pool_of_threads(tmp_path: Path, procs: Processes) -> None:
    """40 databases with a replica each run on a bounded pool of threads (not two per
    database: that cost ~55 MiB per 1,000), and every one is still replicated in full."""
    from litestream_py.scheduler import MAX_WORKERS

    dbs = [tmp_path / "dbs" / f"db{i:02d}.db" for i in range(40)]
    (tmp_path / "dbs").mkdir()
    cfg = write_config(tmp_path / "litestream.yml", {db: [f"file://{tmp_path / 'backups' / db.stem}"] for db in dbs})
    for i, db in enumerate(dbs):
        app = open_app_db(db)
        app.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        app.execute("INSERT INTO t (v) VALUES (?)", (f"before {i}",))
        app.commit()
        app.close()
    p = procs.lsr_replicate("-config", str(cfg))
    for db in dbs:
        wait_ready(p, tmp_path / "backups" / db.stem)
    # Two pools (monitors, shippers) of a timer and up to MAX_WORKERS workers each, and four
    # of their own: main, the inotify reader, the lease keeper, the control socket's server.
    # Fewer than one thread per database, let alone two.
    fixed = 4
    assert _threads_of(p.pid) <= 2 * (MAX_WORKERS + 1) + fixed < 2 * len(dbs)
    for i, db in enumerate(dbs):
        app = open_app_db(db)
        app.execute("INSERT INTO t (v) VALUES (?)", (f"after {i}",))
        app.commit()
        app.close()
    stop_lsr(p)
    for i, db in enumerate(dbs):
        out = tmp_path / "restored" / db.name
        restore(f"file://{tmp_path / 'backups' / db.stem}", out)
        assert rows(out, "SELECT v FROM t ORDER BY id") == [(f"before {i}",), (f"after {i}",)]


# -- 9. a database past SQLite's lock-byte page ----------------------------------

LOCK_BYTE_OFFSET = 1 << 30
BLOB_SIZE = 1 << 20


def _fill(conn: sqlite3.Connection, first: int, nbytes: int, compressible: bool = False) -> int:
    """Random blobs, which LZ4 cannot shrink; or blobs of a random 4 KiB piece repeated, which
    it can (no page is zeros, so a page restored as zeros still fails the hash)."""
    n = nbytes // BLOB_SIZE
    conn.execute("BEGIN")
    for i in range(first, first + n):
        data = os.urandom(4096) * (BLOB_SIZE // 4096) if compressible else os.urandom(BLOB_SIZE)
        conn.execute("INSERT INTO blobs (id, data) VALUES (?, ?)", (i, data))
        if i % 64 == 63:
            conn.execute("COMMIT")
            conn.execute("BEGIN")
    conn.execute("COMMIT")
    return first + n


@pytest.mark.slow  # 15-30 s: writes, snapshots, restores and hashes 1.1 GiB
def test_database_across_the_lock_byte_page(tmp_path: Path, procs: Processes) -> None:
    """~1.1 GiB: the snapshot covers most of it, the WAL frames lsr ships cross offset 1 GiB.
    The snapshot's bulk compresses (the test is about offsets, not LZ4's worst case; that
    keeps CI under 10 minutes); what crosses 1 GiB through the WAL is random."""
    started = time.monotonic()
    db, replica, restored = tmp_path / "big.db", tmp_path / "replica", tmp_path / "restored.db"
    try:
        # The bulk is written before replication starts, in rollback mode without
        # syncs: only the replication of it is under test, not its creation.
        setup = sqlite3.connect(str(db), isolation_level=None)
        setup.execute("PRAGMA journal_mode = OFF")
        setup.execute("PRAGMA synchronous = OFF")
        setup.execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB)")
        next_id = _fill(setup, 0, 960 << 20, compressible=True)
        setup.close()
        assert os.path.getsize(db) < LOCK_BYTE_OFFSET
        app = open_app_db(db)

        phases = {"setup": time.monotonic() - started}
        p = procs.lsr_replicate(str(db), f"file://{replica}")
        wait_ready(p, replica, timeout=120)
        phases["snapshot"] = time.monotonic() - started
        next_id = _fill(app, next_id, 160 << 20)  # through the WAL while lsr runs
        app.execute("UPDATE blobs SET data = zeroblob(100) WHERE id % 97 = 0")
        phases["writes"] = time.monotonic() - started
        stop_lsr(p, timeout=120)
        phases["stop"] = time.monotonic() - started
        app.close()
        page_size = rows(db, "PRAGMA page_size")[0][0]
        assert os.path.getsize(db) > LOCK_BYTE_OFFSET + 64 * page_size

        restore(f"file://{replica}", restored)
        phases["restore"] = time.monotonic() - started
        assert integrity_ok(restored)
        phases["integrity"] = time.monotonic() - started
        assert os.path.getsize(restored) == os.path.getsize(db)
        assert content_hash(restored) == content_hash(db)
        phases["hash"] = time.monotonic() - started
        print(f"lock-byte test: {os.path.getsize(db) / (1 << 30):.2f} GiB,",
              ", ".join(f"{k} at {v:.1f}s" for k, v in phases.items()))
    finally:
        # Gigabytes: do not leave them to pytest's retention of old tmp_paths.
        shutil.rmtree(replica, ignore_errors=True)
        shutil.rmtree(meta_dir(db), ignore_errors=True)
        for path in (db, restored, Path(f"{db}-wal"), Path(f"{db}-shm")):
            path.unlink(missing_ok=True)


# -- a replica directory wiped while lsr runs ---------------------------------------------

def test_file_replica_wiped_while_running_is_written_again(tmp_path: Path, procs: Processes) -> None:
    """An operator removes the replica directory: lsr notices at its next shipment, logs it,
    and writes the replica again from a new snapshot, without a restart."""
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    app = open_app_db(db)
    app.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    p = procs.lsr_replicate(str(db), f"file://{replica}")
    wait_ready(p, replica)
    for i in range(20):
        app.execute("INSERT INTO t (v) VALUES (?)", (f"before-{i}",))
    wait_synced(db, replica)
    shutil.rmtree(replica)
    for i in range(20):
        app.execute("INSERT INTO t (v) VALUES (?)", (f"after-{i}",))
    wait_for(lambda: "no snapshot on the replica any more" in Processes.output(p), what="lsr to notice")
    wait_synced(db, replica)
    assert p.poll() is None  # no restart
    write_stop_and_restore(app, p, db, replica)
