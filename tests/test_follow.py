"""``lsr restore -f``: a warm standby that readers in other processes use while it follows.

Everything is real: the primary's writer, ``lsr replicate``, the follower and
the reader of the standby are separate processes; the follower is SIGKILLed.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from support.config import write_config
from support.procs import LSR, Processes, run_lsr, wait_for
from support.sqlite import integrity_ok, rows
from support.engine import FollowerThread
from support.eventhistory import create, event_count
from litestream_py.standby import STATE_SUFFIX

HERE = Path(__file__).parent
EVENTHISTORY = str(HERE / "support" / "eventhistory.py")


def reader_summary(path: Path) -> dict[str, object]:
    try:
        return dict(json.loads(path.read_text()))
    except (FileNotFoundError, ValueError):
        return {"checks": 0, "max_events": 0, "failures": []}


def follow(procs: Processes, standby: Path, replica_url: str, *extra: str) -> subprocess.Popen[bytes]:
    return procs.start([LSR, "restore", "-f", "-v", *extra, "-o", str(standby), replica_url], "follow")


def test_eventhistory_standby_follows_resumes_and_promotes(tmp_path: Path, procs: Processes) -> None:
    """The seed scenario on a file replica: events looked up by ID on the standby while the
    primary writes; the follower SIGKILLed and resumed without a restore; SIGTERM leaves a
    promotable database with every event."""
    primary, standby, replica = tmp_path / "events.db", tmp_path / "standby.db", tmp_path / "replica"
    create(str(primary))
    sidecar = procs.lsr_replicate(str(primary), f"file://{replica}")
    writer = procs.start([sys.executable, EVENTHISTORY, "write", str(primary)], "writer")
    wait_for(lambda: (replica / "generations").is_dir() and rows(primary, "SELECT count(*) FROM events")[0][0] > 50, what="events on the replica")

    follower = follow(procs, standby, f"file://{replica}")
    result, stop_file = tmp_path / "reader.json", tmp_path / "reader.stop"
    reader = procs.start([sys.executable, EVENTHISTORY, "read", str(standby), str(result), str(stop_file)], "reader")
    wait_for(lambda: int(reader_summary(result)["max_events"]) > 150, timeout=60, what="events read on the standby")  # type: ignore[call-overload]

    # SIGKILL mid-stream: the next run resumes from the state beside STANDBY. With every
    # snapshot on the replica unreadable, a full restore could not even start. (Garbled,
    # not removed: the primary's sidecar takes a replica without a snapshot for a wiped one
    # and writes it again from a new snapshot.)
    procs.stop(follower, signal.SIGKILL)
    state = json.loads(Path(str(standby) + STATE_SUFFIX).read_text())
    assert state["states"], state
    hidden = {snap: snap.read_bytes() for snap in replica.glob("generations/*/snapshots/*.snapshot.lz4")}
    for snap, data in hidden.items():
        snap.write_bytes(b"\0" * len(data))
    seen = int(reader_summary(result)["max_events"])  # type: ignore[call-overload]
    follower = follow(procs, standby, f"file://{replica}")
    wait_for(lambda: int(reader_summary(result)["max_events"]) > seen + 100, timeout=60,  # type: ignore[call-overload]
             what="the resumed follower to apply new events")
    log = Processes.output(follower)
    assert "resuming" in log and "snapshot" not in log, log
    for snap, data in hidden.items():
        snap.write_bytes(data)

    procs.stop(writer, signal.SIGKILL)
    assert procs.stop(sidecar) == 0  # its final sync ships the primary's last commit
    # The standby must end up with what the replica holds: every commit of the primary, and
    # possibly one more, which the writer had written when it was killed but SQLite had not
    # published yet (lsr reads the WAL file, where it is whole).
    probe = tmp_path / "probe.db"
    res = subprocess.run([LSR, "restore", "-o", str(probe), f"file://{replica}"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    (total,) = rows(probe, "SELECT count(*) FROM events")[0]
    assert total - 1 <= rows(primary, "SELECT count(*) FROM events")[0][0] <= total
    seen_counts: list[int] = []
    try:
        wait_for(lambda: seen_counts.append(event_count(standby)) or seen_counts[-1] == total, timeout=60,
                 what=f"the standby to catch up with the primary's {total} events")
    except AssertionError:
        raise AssertionError(f"standby at {seen_counts[-3:]} of {total}; follower:\n{Processes.output(follower)[-3000:]}")
    assert procs.stop(follower, signal.SIGTERM) == 0, Processes.output(follower)
    stop_file.touch()
    assert reader.wait(timeout=30) == 0, Processes.output(reader)
    summary = reader_summary(result)
    assert summary["failures"] == [], summary
    assert int(summary["checks"]) > 100, summary  # type: ignore[call-overload]

    # Promotable as it is: WAL mode, intact, every event, writable.
    assert rows(standby, "PRAGMA journal_mode") == [("wal",)]
    assert integrity_ok(standby)
    assert rows(standby, "SELECT count(*), max(id) FROM events") == rows(probe, "SELECT count(*), max(id) FROM events")
    assert not Path(str(standby) + "-journal").exists()


def replace_file(path: Path, data: bytes) -> None:
    """As a replica writes: the follower never reads a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _segments(replica: Path) -> list[Path]:
    return sorted(replica.glob("generations/*/wal/*.wal.lz4"))


def _insert_events(primary: Path, first: int, last: int, replica: Path) -> None:
    """One event per commit, each waited for on the replica, so each gets its own segment."""
    from support.eventhistory import event_id, payload

    conn = sqlite3.connect(str(primary), isolation_level=None, timeout=30)
    for n in range(first, last + 1):
        before = len(_segments(replica))
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO events VALUES (?, 't', ?, 0)", (event_id(n), payload(n)))
        conn.execute("UPDATE counters SET n = ? WHERE name = 'events'", (n,))
        conn.execute("COMMIT")
        wait_for(lambda: len(_segments(replica)) > before, what=f"event {n}'s segment")
    conn.close()


def test_gap_and_corrupt_segment_are_reported_then_recovered(tmp_path: Path, procs: Processes,
                                                             caplog: "pytest.LogCaptureFixture") -> None:
    import logging

    primary, standby, replica = tmp_path / "events.db", tmp_path / "standby.db", tmp_path / "replica"
    create(str(primary))
    sidecar = procs.lsr_replicate(str(primary), f"file://{replica}")
    wait_for(lambda: any(replica.glob("generations/*/snapshots/*")), what="the first snapshot")
    _insert_events(primary, 1, 12, replica)
    assert procs.stop(sidecar) == 0
    segments = _segments(replica)
    # Events 1..12 are the last 12 segments; hide event 5's, corrupt event 8's.
    missing, corrupt = segments[-8], segments[-5]
    hidden = tmp_path / missing.name
    missing.rename(hidden)
    good = corrupt.read_bytes()
    replace_file(corrupt, good[:-40] + bytes(40))  # its LZ4 frame no longer decodes

    caplog.set_level(logging.INFO, logger="litestream_py")
    running = FollowerThread(replica, standby)
    try:
        wait_for(lambda: "missing wal segment" in running.follower.status().error, timeout=60,
                 what="the gap to be reported")
        assert event_count(standby) == 4  # everything before the gap, nothing after it
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and missing.name[:17] in errors[0].getMessage(), errors
        # lsr status STANDBY shows the follower stuck, by the error it logged.
        shown = run_lsr("status", "-json", str(standby))
        assert shown.returncode == 0, shown.stderr
        follower_status = json.loads(shown.stdout)["follower"]
        assert follower_status["following"] is True and missing.name[:17] in follower_status["error"]
        assert "ERROR" in run_lsr("status", str(standby)).stdout

        hidden.rename(missing)
        wait_for(lambda: "cannot apply" in running.follower.status().error, timeout=60,
                 what="the corrupt segment to be reported")
        assert event_count(standby) == 7
        replace_file(corrupt, good)
        wait_for(lambda: running.follower.status().error == "", timeout=60, what="the follower to recover")
        wait_for(lambda: event_count(standby) == 12, timeout=60, what="the rest to apply")
        assert json.loads(run_lsr("status", "-json", str(standby)).stdout)["follower"]["error"] is None
    finally:
        running.close()
    assert integrity_ok(standby)
    stopped = json.loads(run_lsr("status", "-json", str(standby)).stdout)["follower"]
    assert stopped["following"] is False and stopped["position"], stopped


def test_new_generation_is_swapped_in(tmp_path: Path, procs: Processes) -> None:
    """The primary's sidecar restarts without its meta dir: a new generation; the follower
    restores its snapshot into a temporary file, swaps it in, and follows it on."""
    from support.workload import meta_dir

    primary, standby, replica = tmp_path / "events.db", tmp_path / "standby.db", tmp_path / "replica"
    create(str(primary))
    sidecar = procs.lsr_replicate(str(primary), f"file://{replica}")
    wait_for(lambda: any(replica.glob("generations/*/snapshots/*")), what="the first snapshot")
    _insert_events(primary, 1, 3, replica)
    running = FollowerThread(replica, standby)
    try:
        wait_for(lambda: standby.exists() and event_count(standby) == 3, timeout=60, what="the first generation")
        first = running.follower.status().position.generation
        assert procs.stop(sidecar) == 0
        import shutil

        shutil.rmtree(meta_dir(primary))
        sidecar = procs.lsr_replicate(str(primary), f"file://{replica}")
        wait_for(lambda: len(list(replica.glob("generations/*/snapshots/*"))) == 2, what="the new generation")
        _insert_events(primary, 4, 6, replica)
        wait_for(lambda: event_count(standby) == 6, timeout=60, what="the new generation on the standby")
        assert running.follower.status().position.generation not in ("", first)
    finally:
        running.close()
    assert integrity_ok(standby)
    assert procs.stop(sidecar) == 0


def test_a_lasting_gap_is_skipped_from_a_newer_snapshot(tmp_path: Path, procs: Processes,
                                                        caplog: "pytest.LogCaptureFixture") -> None:
    """A segment is lost for good; a later snapshot of the same generation (what a scheduled
    snapshot would write) lets the follower swap past the gap instead of staying stuck."""
    import logging

    from litestream_py import codec
    from litestream_py.clients.file import FileReplicaClient

    primary, standby, replica = tmp_path / "events.db", tmp_path / "standby.db", tmp_path / "replica"
    create(str(primary))
    sidecar = procs.lsr_replicate(str(primary), f"file://{replica}")
    wait_for(lambda: any(replica.glob("generations/*/snapshots/*")), what="the first snapshot")
    _insert_events(primary, 1, 8, replica)
    assert procs.stop(sidecar) == 0
    _segments(replica)[-4].unlink()  # event 5's segment: gone

    caplog.set_level(logging.INFO, logger="litestream_py")
    running = FollowerThread(replica, standby)
    try:
        wait_for(lambda: running.follower.status().error != "", timeout=60, what="the gap to be reported")
        assert event_count(standby) == 4
        # A snapshot of the whole database at the next WAL index, as lsr writes one.
        conn = sqlite3.connect(str(primary))
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        client = FileReplicaClient(str(replica))
        (generation,) = client.generations()
        import io

        data = io.BytesIO(codec.compress(primary.read_bytes()))
        client.write_snapshot(generation, 1, data)
        wait_for(lambda: event_count(standby) == 8, timeout=60, what="the newer snapshot on the standby")
        wait_for(lambda: running.follower.status().error == "", timeout=60, what="the error to clear")
    finally:
        running.close()
    assert any("skipping past the gap" in r.getMessage() for r in caplog.records)
    assert integrity_ok(standby)


def test_follow_bad_input_is_one_line(tmp_path: Path) -> None:
    from support.procs import run_lsr

    url = f"file://{tmp_path / 'replica'}"
    cases = [
        (["restore", "-f", url], "cannot follow without -o STANDBY"),
        (["restore", "-f", "-follow-interval", "soon", "-o", str(tmp_path / "s.db"), url], "soon"),
        (["restore", "-f", "-follow-interval", "0s", "-o", str(tmp_path / "s.db"), url], "must be positive"),
        (["restore", "-f", "-timestamp", "2024-01-01T00:00:00Z", "-o", str(tmp_path / "s.db"), url],
         "do not apply to -f"),
    ]
    unrelated = tmp_path / "unrelated.db"
    sqlite3.connect(str(unrelated)).execute("CREATE TABLE x (y)").connection.close()
    cases.append((["restore", "-f", "-o", str(unrelated), url], "does not match it; remove both"))
    for args, text in cases:
        res = run_lsr(*args)
        assert res.returncode == 1, (args, res.stdout, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and text in lines[0] and "Traceback" not in res.stderr, (args, res.stderr)
    assert not (tmp_path / "s.db").exists() and not (tmp_path / "replica").exists()


def test_follows_an_encrypted_replica_given_the_identity(tmp_path: Path, procs: Processes) -> None:
    """restore -f reads an age replica through the same decrypting reader as restore: with the
    identity in the config it follows; with the recipients only it fails in one line saying so."""
    from support.workload import AgeKeyPair

    primary, standby, replica = tmp_path / "events.db", tmp_path / "standby.db", tmp_path / "replica"
    create(str(primary))
    pair = AgeKeyPair()
    cfg, public_only = tmp_path / "lsr.yml", tmp_path / "public.yml"
    for path, identities in ((cfg, True), (public_only, False)):
        write_config(path, primary, f"file://{replica}", extra=pair.yaml(identities=identities))
    sidecar = procs.start([LSR, "replicate", "-config", str(public_only)], "sidecar")
    wait_for(lambda: any(replica.glob("generations/*/snapshots/*")), what="the first snapshot")
    _insert_events(primary, 1, 5, replica)
    assert next(replica.glob("generations/*/wal/*.wal.lz4")).read_bytes().startswith(b"age-encryption.org/v1")

    refused = run_lsr("restore", "-f", "-config", str(public_only), "-o", str(tmp_path / "no.db"), str(primary))
    assert refused.returncode == 1 and "age-encrypted" in refused.stderr, refused.stderr
    assert pair.identity not in refused.stdout + refused.stderr and not (tmp_path / "no.db").exists()

    follower = procs.start([LSR, "restore", "-f", "-config", str(cfg), "-o", str(standby), str(primary)], "follow")
    wait_for(lambda: standby.exists() and event_count(standby) == 5, timeout=60, what="the standby at 5 events")
    _insert_events(primary, 6, 9, replica)
    wait_for(lambda: event_count(standby) == 9, timeout=60, what="the standby to follow to 9 events")
    assert procs.stop(follower, signal.SIGTERM) == 0, Processes.output(follower)
    assert procs.stop(sidecar) == 0
    assert integrity_ok(standby)
    assert pair.identity not in Processes.output(follower)
