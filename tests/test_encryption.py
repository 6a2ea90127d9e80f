"""Encrypted replicas (age): the format, restarts without the private key, changing keys, clear failures.

The engine runs in-process on real SQLite (apsw, as in test_restore) and a real
file replica; the command-line tests run the real ``lsr``. Keys are made at
test time with pyrage; every log and error text is searched for the secret key.
Compatibility with Go Litestream 0.3.13 lives in test_compat_go.py and tests/s3.
"""

from __future__ import annotations

import os
import signal
import struct
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyrage
import pytest
from pyrage import x25519

from support.config import write_config
from support.procs import Processes, run_lsr, stop_process, wait_for
from support.sqlite import integrity_ok, open_app_db, rows
from support.s3 import S3Server, make_s3_client
from litestream_py import codec
from litestream_py.clients.file import FileReplicaClient
from litestream_py.config import parse_config
from litestream_py.db import DB
from litestream_py.encryption import AGE_MAGIC, AgeKeys, AgeReader
from litestream_py.errors import ChecksumMismatchError, ConfigError, EncryptedReplicaError
from litestream_py.pos import Pos
from litestream_py.replica import Replica
from litestream_py.restore import RestoreOptions, restore
from support.engine import app_connection, commit_and_ship, replicated_app
from support.workload import AgeKeyPair, assert_encrypted, local_generation, new_generation_lines, stop_lsr, wait_ready

SECRET_ROW = "row-"  # every committed row's text starts so (test_restore.commit_and_ship)


def keys(*pairs: AgeKeyPair, identities: bool = True) -> AgeKeys:
    return AgeKeys(
        [x25519.Identity.from_str(p.identity) for p in pairs] if identities else [],
        [x25519.Recipient.from_str(p.recipient) for p in pairs],
    )


def count_reads(client: Any) -> list[str]:
    """Record every object read from the real ``client`` (its names), reads still done by it."""
    reads: list[str] = []
    read_segment, open_snapshot = client.read_wal_segment, client.open_snapshot

    def read_wal_segment(pos: Pos) -> bytes:
        reads.append(str(pos))
        return read_segment(pos)  # type: ignore[no-any-return]

    def open_snapshot_counted(generation: str, index: int) -> Any:
        reads.append(f"{generation}/{index:08x}")
        return open_snapshot(generation, index)

    client.read_wal_segment, client.open_snapshot = read_wal_segment, open_snapshot_counted
    return reads


def run_sidecar(app: object, path: Path, client: Any, age: AgeKeys | None, n: int, start: int) -> str:
    """One run of lsr's engine on ``path``: ``n`` commits shipped, then closed; returns its generation.

    The application's connection stays open across runs, so the WAL survives and
    lsr could prove continuity: only the replica's configuration decides.
    """
    db = DB(str(path))
    r = Replica(db, client, "file", age=age)
    db.replicas.append(r)
    try:
        commit_and_ship(app, db, r, n, start=start)  # type: ignore[arg-type]
        return db.pos().generation
    finally:
        db.close()


def restore_rows(reader: AgeReader, out: Path, **options: object) -> int:
    restore(reader, RestoreOptions(output_path=str(out), **options))  # type: ignore[arg-type]
    assert integrity_ok(out)
    return int(rows(out, "SELECT count(*) FROM t")[0][0])


# -- 1. the format --------------------------------------------------------------------

def test_objects_are_age_of_lz4_with_the_commit_times_inside(tmp_path: Path) -> None:
    pair = AgeKeyPair()
    client = FileReplicaClient(str(tmp_path / "replica"))
    with replicated_app(tmp_path / "app.db", lambda db: Replica(db, client, "file", age=keys(pair))) as (app, db, r):
        commit_and_ship(app, db, r, 10)
    assert assert_encrypted(tmp_path / "replica", SECRET_ROW.encode(), b"LSRT", b"LSRS") == 11
    (generation,) = client.generations()
    ident = [x25519.Identity.from_str(pair.identity)]
    segment = pyrage.decrypt(client.read_wal_segment(client.wal_segments(generation)[1].pos), ident)
    magic, _ = struct.unpack_from("<II", segment)
    assert magic == codec.SKIPPABLE_MAGIC  # lsr's commit times, inside the encryption
    data, commits = codec.decode_segment(segment)
    assert commits and b"row-" in data
    with client.open_snapshot(generation, 0) as f:
        snapshot = pyrage.decrypt(f.read(), ident)
    assert snapshot.startswith(struct.pack("<I", codec.SKIPPABLE_MAGIC))  # lsr's capture-time header
    assert restore_rows(AgeReader(client, keys(pair)), tmp_path / "out.db") == 10


def test_a_plain_and_an_encrypted_replica_of_one_database(tmp_path: Path) -> None:
    pair = AgeKeyPair()
    plain = FileReplicaClient(str(tmp_path / "plain"))
    sealed = FileReplicaClient(str(tmp_path / "sealed"))
    with replicated_app(tmp_path / "app.db", lambda db: Replica(db, plain, "plain")) as (app, db, r1):
        r2 = Replica(db, sealed, "sealed", age=keys(pair))
        db.replicas.append(r2)
        for i in range(8):
            commit_and_ship(app, db, r1, 1, start=i)
            r2.sync()
    assert_encrypted(tmp_path / "sealed", SECRET_ROW.encode())
    assert not any(p.read_bytes().startswith(AGE_MAGIC) for p in (tmp_path / "plain").rglob("*.lz4"))
    assert restore_rows(AgeReader(plain, None), tmp_path / "a.db") == 8
    assert restore_rows(AgeReader(sealed, keys(pair)), tmp_path / "b.db") == 8


# -- 4. a writer with public keys only --------------------------------------------------

@pytest.mark.parametrize("backend", ["file", "s3"])
def test_a_writer_with_recipients_only_resumes_without_decrypting(
    tmp_path: Path, backend: str, s3_servers: dict[str, S3Server]
) -> None:
    """The restarted replica continues its generation from the names on the replica and the
    shadow WAL: it reads no object (it has no identity to read one with)."""
    pair = AgeKeyPair()
    if backend == "s3":
        server = s3_servers["nanio"]
        client: Any = make_s3_client(server, server.create_bucket())
    else:
        client = FileReplicaClient(str(tmp_path / "replica"))
    reads = count_reads(client)
    public_only = keys(pair, identities=False)
    app = app_connection(tmp_path / "app.db")
    for run in range(3):
        run_sidecar(app, tmp_path / "app.db", client, public_only, 5, 5 * run)
    app.close()
    assert reads == []
    assert len(client.generations()) == 1, "the generation was not continued"
    reader = AgeReader(client, keys(pair))
    assert restore_rows(reader, tmp_path / "out.db") == 15
    # Every restart shipped the last segment again, from its start, holding as much or more.
    (generation,) = client.generations()
    offsets = [w.offset for w in client.wal_segments(generation)]
    assert offsets == sorted(set(offsets))


def test_sigkill_of_a_sidecar_holding_public_keys_only(tmp_path: Path, procs: Processes) -> None:
    """lsr replicate with recipients only, SIGKILLed twice mid-load: it resumes each time; the
    private key lives only in the restore host's config, and never reaches a log line."""
    pair = AgeKeyPair()
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    app = open_app_db(db)
    app.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    settings: dict[str, Any] = {"top": {"logging": {"level": "debug"}}, "monitor_interval": "50ms"}
    writer_cfg = write_config(tmp_path / "writer.yml", db, {"type": "file", "path": replica},
                              extra=pair.yaml(identities=False), **settings)
    restore_cfg = write_config(tmp_path / "restore.yml", db, {"type": "file", "path": replica}, extra=pair.yaml(),
                               **settings)
    outputs, n = [], 0
    for run in range(3):
        p = procs.lsr_replicate("-config", str(writer_cfg))
        wait_ready(p, replica)
        for _ in range(30):
            app.execute("INSERT INTO t (v) VALUES (?)", (f"{SECRET_ROW}{n}",))
            n += 1
        if run < 2:
            wait_for(lambda: "wal segment written" in Processes.output(p), timeout=30, what="a shipment")
            assert stop_process(p, signal.SIGKILL, timeout=10) == -signal.SIGKILL
            outputs.append(Processes.output(p))
    res = run_lsr("verify", "-config", str(restore_cfg), str(db))  # the live sidecar, at the same position
    assert res.returncode == 0 and "OK" in res.stdout, res
    outputs += [stop_lsr(p), res.stdout + res.stderr]
    app.close()
    assert not any(new_generation_lines(o) for o in outputs[1:-1]), "a restart began a new generation"
    assert "lz4" not in "".join(outputs).lower()
    assert_encrypted(replica, SECRET_ROW.encode())
    out = tmp_path / "out.db"
    res = run_lsr("restore", "-config", str(restore_cfg), "-o", str(out), str(db))
    assert res.returncode == 0, res
    assert rows(out, "SELECT count(*) FROM t") == [(n,)]
    pair.assert_absent(*outputs, res.stdout + res.stderr)


# -- 6. clear failures --------------------------------------------------------------------

def test_no_identity_is_one_line_naming_the_encryption_and_writes_nothing(tmp_path: Path) -> None:
    pair, other = AgeKeyPair(), AgeKeyPair()
    client = FileReplicaClient(str(tmp_path / "replica"))
    with replicated_app(tmp_path / "app.db", lambda db: Replica(db, client, "file", age=keys(pair))) as (app, db, r):
        commit_and_ship(app, db, r, 3)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    url = f"file://{tmp_path / 'replica'}"
    for args in (["restore", "-o", str(out_dir / "x.db"), url], ["verify", url]):
        res = run_lsr(*args)
        assert res.returncode == 1, res
        assert res.stderr.count("\n") == 1 and "age-encrypted" in res.stderr, res.stderr
        assert "lz4" not in res.stderr.lower() and "decompress" not in res.stderr, res.stderr
        assert "no age identity is configured" in res.stderr
    assert os.listdir(out_dir) == []
    # A configured identity that is not a recipient: named as such, nothing written.
    cfg = write_config(tmp_path / "wrong.yml", tmp_path / "app.db", tmp_path / "replica", extra=other.yaml())
    res = run_lsr("restore", "-config", str(cfg), "-o", str(out_dir / "y.db"), str(tmp_path / "app.db"))
    assert res.returncode == 1 and "no configured age identity opens it" in res.stderr, res.stderr
    assert os.listdir(out_dir) == []
    other.assert_absent(res.stderr, res.stdout)
    pair.assert_absent(res.stderr, res.stdout)


@pytest.mark.parametrize("age,message", [
    ("identities: [AGE-SECRET-KEY-1NOTAKEY]", "identities[0] is not an age identity"),
    ("recipients: [age1notakey]", "recipients[0] is not an age recipient"),
    ("recipient: [age1x]", "unknown key 'recipient'"),
    ("", "has no identities and no recipients"),
    ("identities-file: /nonexistent/key.txt", "cannot read dbs[0].replicas[0].age.identities-file"),
])
def test_bad_age_config_is_one_line(tmp_path: Path, age: str, message: str) -> None:
    text = f"dbs:\n  - path: {tmp_path / 'a.db'}\n    replicas:\n      - path: {tmp_path / 'r'}\n        age: {{{age}}}\n"
    with pytest.raises(ConfigError) as err:
        parse_config(text)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_malformed_secret_is_never_echoed(tmp_path: Path) -> None:
    secret = AgeKeyPair().identity
    broken = secret[:-6] + ("QQQQQQ" if not secret.endswith("QQQQQQ") else "PPPPPP")  # bad checksum
    cfg = tmp_path / "c.yml"
    cfg.write_text(f"dbs:\n  - path: {tmp_path / 'a.db'}\n    replicas:\n      - path: {tmp_path / 'r'}\n"
                   f"        age:\n          identities: [{broken}]\n          recipients: [{AgeKeyPair().recipient}]\n")
    for cmd in (["replicate", "-config", str(cfg)], ["restore", "-config", str(cfg), str(tmp_path / "a.db")]):
        res = run_lsr(*cmd)
        assert res.returncode == 1 and "is not an age identity" in res.stderr, res
        assert broken not in res.stderr + res.stdout and broken[:20] not in res.stderr + res.stdout


@pytest.mark.parametrize("where,text", [
    ("top", "age: {recipients: [RECIPIENT]}\ndbs:\n  - path: DB\n    replicas:\n      - path: REPLICA\n"),
    ("db", "dbs:\n  - path: DB\n    age: {recipients: [RECIPIENT]}\n    replicas:\n      - path: REPLICA\n"),
    ("no recipients", "dbs:\n  - path: DB\n    replicas:\n      - path: REPLICA\n        age: {identities: [IDENTITY]}\n"),
])
def test_replicate_refuses_age_that_would_encrypt_nothing(tmp_path: Path, where: str, text: str) -> None:
    pair = AgeKeyPair()
    cfg = tmp_path / "c.yml"
    cfg.write_text(text.replace("DB", str(tmp_path / "a.db")).replace("REPLICA", str(tmp_path / "r"))
                   .replace("RECIPIENT", pair.recipient).replace("IDENTITY", pair.identity))
    open_app_db(tmp_path / "a.db").close()
    res = run_lsr("replicate", "-config", str(cfg), timeout=60)
    assert res.returncode == 1, res
    assert res.stderr.startswith("Error: cannot") and res.stderr.count("\n") == 1, res.stderr
    assert ("belongs in a replica" if where != "no recipients" else "age has no recipients") in res.stderr
    assert not (tmp_path / "r").exists()
    pair.assert_absent(res.stderr, res.stdout)


def test_identities_from_a_file_or_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pair = AgeKeyPair()
    key_file = tmp_path / "key.txt"
    key_file.write_text(f"# created: today\n# public key: {pair.recipient}\n{pair.identity}\n")
    text = (f"dbs:\n  - path: {tmp_path / 'a.db'}\n    replicas:\n      - path: {tmp_path / 'r'}\n"
            f"        age:\n          identities-file: {key_file}\n          recipients: [{pair.recipient}]\n")
    (rc,) = parse_config(text).dbs[0].replicas
    assert rc.age is not None and len(rc.age.identities) == 1
    assert pair.identity not in repr(rc) + repr(rc.age)
    assert pyrage.decrypt(rc.age.encrypt(b"hello"), rc.age.identities) == b"hello"
    monkeypatch.setenv("LSR_TEST_AGE_IDENTITY", pair.identity)
    (rc,) = parse_config(f"dbs:\n  - path: /a.db\n    replicas:\n      - path: /r\n"
                         "        age: {identities: [$LSR_TEST_AGE_IDENTITY]}\n").dbs[0].replicas
    assert rc.age is not None and pyrage.decrypt(pyrage.encrypt(b"hi", [x25519.Recipient.from_str(pair.recipient)]),
                                                 rc.age.identities) == b"hi"


# -- 7. changing keys ----------------------------------------------------------------------

def test_gaining_age_starts_a_new_generation_and_says_why(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pair = AgeKeyPair()
    client = FileReplicaClient(str(tmp_path / "replica"))
    app = app_connection(tmp_path / "app.db")
    plain_generation = run_sidecar(app, tmp_path / "app.db", client, None, 4, 0)
    assert run_sidecar(app, tmp_path / "app.db", client, None, 1, 4) == plain_generation  # continuity holds
    with caplog.at_level("INFO", logger="litestream_py.db"):
        run_sidecar(app, tmp_path / "app.db", client, keys(pair), 3, 5)
    app.close()
    assert "replica file is now age-encrypted" in caplog.text
    (sealed,) = set(client.generations()) - {plain_generation}
    for info in client.snapshots(sealed):
        with client.open_snapshot(sealed, info.index) as f:
            assert f.read(len(AGE_MAGIC)) == AGE_MAGIC
    reader = AgeReader(client, keys(pair))
    assert restore_rows(reader, tmp_path / "new.db") == 8  # the latest generation: the encrypted one
    assert restore_rows(reader, tmp_path / "old.db", generation=plain_generation) == 5  # mixed: plain still reads


def test_restore_across_a_recipient_rotation(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    old, new = AgeKeyPair(), AgeKeyPair()
    client = FileReplicaClient(str(tmp_path / "replica"))
    app = app_connection(tmp_path / "app.db")
    first = run_sidecar(app, tmp_path / "app.db", client, keys(old), 3, 0)
    assert run_sidecar(app, tmp_path / "app.db", client, keys(old, identities=False), 1, 3) == first
    with caplog.at_level("INFO", logger="litestream_py.db"):
        run_sidecar(app, tmp_path / "app.db", client, keys(new), 2, 4)
    app.close()
    assert "has new age recipients" in caplog.text
    (second,) = set(client.generations()) - {first}
    both = AgeReader(client, keys(old, new))
    assert restore_rows(both, tmp_path / "a.db", generation=first) == 4
    assert restore_rows(both, tmp_path / "b.db", generation=second) == 6
    with pytest.raises(EncryptedReplicaError, match="no configured age identity opens it"):
        restore(AgeReader(client, keys(new)), RestoreOptions(output_path=str(tmp_path / "c.db"), generation=first))
    assert not (tmp_path / "c.db").exists()


# -- 8. everything else on an encrypted replica --------------------------------------------

def test_exact_timestamp_parallel_restore_and_retention(tmp_path: Path) -> None:
    pair = AgeKeyPair()
    client = FileReplicaClient(str(tmp_path / "replica"))
    with replicated_app(tmp_path / "app.db", lambda db: Replica(db, client, "file", age=keys(pair))) as (app, db, r):
        for i in range(12):
            commit_and_ship(app, db, r, 1, start=i)
        r.retention = timedelta(0)
        r.enforce_retention()  # a new (encrypted) snapshot replaces the old one
        commit_and_ship(app, db, r, 3, start=12)
    assert_encrypted(tmp_path / "replica", SECRET_ROW.encode())
    (generation,) = client.generations()
    assert [s.index for s in client.snapshots(generation)] != [0], "retention took no new snapshot"
    reader = AgeReader(client, keys(pair))
    assert restore_rows(reader, tmp_path / "latest.db", parallelism=4) == 15
    # An instant between two commits restores exactly the commits before it.
    with replicated_app(tmp_path / "app2.db", lambda db: Replica(db, FileReplicaClient(str(tmp_path / "r2")), "f",
                                                                      age=keys(pair))) as (app, db, r):
        stamps = []
        for i in range(8):
            commit_and_ship(app, db, r, 1, start=i)
            stamps.append(datetime.now(timezone.utc) + timedelta(milliseconds=20))
            time.sleep(0.05)
    reader2 = AgeReader(FileReplicaClient(str(tmp_path / "r2")), keys(pair))
    for k in (2, 5, 7):
        assert restore_rows(reader2, tmp_path / f"at-{k}.db", timestamp=stamps[k], parallelism=3) == k + 1


def test_snapshot_stream_decrypts_in_pieces_stops_early_and_names_damage(tmp_path: Path) -> None:
    """A snapshot larger than the decrypting queue streams whole; a reader that stops after the
    header (PITR's capture-time peek) ends the decrypting thread; a damaged or truncated
    ciphertext is a decryption error, never an LZ4 one."""
    import io
    import threading

    pair = AgeKeyPair()
    plain = os.urandom(3 << 20) * 3  # 9 MiB: more than DECRYPT_QUEUE pieces of DECRYPT_CHUNK
    sealed = io.BytesIO()
    keys(pair).encrypt_chunks(iter([plain[i : i + 65536] for i in range(0, len(plain), 65536)]), sealed)
    client = FileReplicaClient(str(tmp_path / "replica"))
    blob = sealed.getvalue()
    for index, data in enumerate([blob, blob[: len(blob) // 2], blob[:-100] + bytes(100)]):
        client.write_snapshot("0123456789abcdef", index, io.BytesIO(data))
    reader = AgeReader(client, keys(pair))
    with reader.open_snapshot("0123456789abcdef", 0) as f:
        assert f.read() == plain
    before = threading.active_count()
    for _ in range(3):
        with reader.open_snapshot("0123456789abcdef", 0) as f:
            assert f.peek(16) == plain[:16]
    assert threading.active_count() == before
    for index in (1, 2):
        with pytest.raises(ChecksumMismatchError, match="cannot decrypt snapshot"):
            with reader.open_snapshot("0123456789abcdef", index) as f:
                f.read()
