"""What a running file-replica sidecar loads: only what its configuration needs.

Measured on the real ``lsr replicate`` process through /proc/PID/maps: every
extension module it imported is mapped there. ``_ssl`` is the marker of the
network stack: boto3 (botocore, urllib3), ``urllib.request`` (the heartbeat)
and ``http.server`` (the metrics endpoint) all import ``ssl``, which maps
libssl and libcrypto (~8 MiB of resident memory). libcrypto alone comes with
hashlib (and secrets and hmac, which import it): ~3.5 MiB. ``pyrage`` (age
encryption) is ~1 MiB more, loaded only for a replica with age keys. numpy
(~13 MiB) is for restores: the sidecar checks WAL frames in C (_walcheck.c).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from support.config import write_config
from support.procs import Processes, wait_for
from support.sqlite import open_app_db
from support.workload import AgeKeyPair, sidecar_on_new_db, stop_lsr, wait_ready, wait_synced


def _mapped_once_started(p: subprocess.Popen[bytes], replica: Path) -> set[str]:
    """The file names mapped by a sidecar once every service has started (it logs "replicating" then)."""
    wait_ready(p, replica)
    wait_for(lambda: "replicating" in Processes.output(p), timeout=30, what="the sidecar's start")
    return _mapped(p.pid)


def _mapped(pid: int) -> set[str]:
    return {Path(line.split()[5]).name for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
            if len(line.split()) > 5}


def test_file_sidecar_loads_no_network_stack(tmp_path: Path, procs: Processes) -> None:
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    app = open_app_db(db)
    app.execute("CREATE TABLE t (v TEXT)")
    app.execute("INSERT INTO t (v) VALUES ('x')")
    plain = procs.lsr_replicate(str(db), f"file://{replica}")
    loaded = _mapped_once_started(plain, replica)
    stop_lsr(plain)
    assert any(name.startswith("_frame.") for name in loaded), "the map lists no extension modules"
    assert not [name for name in loaded if name.startswith(("_ssl", "_hashlib", "libcrypto", "pyrage"))], sorted(loaded)

    # With a metrics endpoint configured, the network stack is loaded: the marker works.
    cfg = write_config(tmp_path / "litestream.yml", db, f"file://{tmp_path / 'replica2'}", top={"addr": "127.0.0.1:0"})
    served = procs.lsr_replicate("-config", str(cfg))
    loaded = _mapped_once_started(served, tmp_path / "replica2")
    stop_lsr(served)
    app.close()
    assert [name for name in loaded if name.startswith("_ssl")], sorted(loaded)
    assert [name for name in loaded if name.startswith("libcrypto")], sorted(loaded)


def test_age_is_loaded_only_for_an_encrypted_replica(tmp_path: Path, procs: Processes) -> None:
    db = tmp_path / "app.db"
    app = open_app_db(db)
    app.execute("CREATE TABLE t (v TEXT)")
    app.execute("INSERT INTO t (v) VALUES ('x')")
    cfg = write_config(tmp_path / "litestream.yml", db, tmp_path / "replica", extra=AgeKeyPair().yaml(identities=False))
    sealed = procs.lsr_replicate("-config", str(cfg))
    loaded = _mapped_once_started(sealed, tmp_path / "replica")
    stop_lsr(sealed)
    app.close()
    assert [name for name in loaded if name.startswith("pyrage")], sorted(loaded)


def test_a_sidecar_copying_and_shipping_wal_loads_no_numpy(tmp_path: Path, procs: Processes) -> None:
    app, db, p = sidecar_on_new_db(tmp_path, procs, {})
    replica = tmp_path / "replica"
    wait_ready(p, replica)
    for _ in range(5):  # transactions of many frames: the shadow copy verifies them, a replica ships them
        app.execute("BEGIN")
        app.executemany("INSERT INTO t (v) VALUES (hex(randomblob(3000)))", [()] * 200)
        app.execute("COMMIT")
    wait_synced(db, replica, config=tmp_path / "lsr.yml")
    loaded = _mapped(p.pid)
    stop_lsr(p)
    app.close()
    assert any(name.startswith("_walcheck.") for name in loaded), sorted(loaded)
    assert not [name for name in loaded if name.startswith(("_multiarray_umath", "libscipy_openblas"))], sorted(loaded)
