"""Configuration parsing: Litestream's YAML keys, durations, env expansion, directories."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from litestream_py.config import parse_config, parse_duration
from litestream_py.errors import ConfigError


def test_durations_like_go() -> None:
    assert parse_duration("1s") == timedelta(seconds=1)
    assert parse_duration("1h30m") == timedelta(hours=1, minutes=30)
    assert parse_duration("250ms") == timedelta(milliseconds=250)
    assert parse_duration("0") == timedelta(0)
    with pytest.raises(ConfigError, match="not a duration"):
        parse_duration("soon")


def test_keys_env_and_unknown_key_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPLICA_ROOT", "/backups")
    cfg = parse_config(
        """
dbs:
  - path: /data/app.db
    monitor-interval: 500ms
    min-checkpoint-page-count: 10
    colour: blue
    replicas:
      - url: file://${REPLICA_ROOT}/app
        retention: 2h
        sync-interval: 3s
"""
    )
    (db,) = cfg.dbs
    assert db.path == "/data/app.db" and db.monitor_interval == timedelta(milliseconds=500)
    assert db.min_checkpoint_page_count == 10
    (rc,) = db.replicas
    assert rc.url == "file:///backups/app" and rc.retention == timedelta(hours=2)
    assert rc.sync_interval == timedelta(seconds=3)
    assert any("'colour'" in w for w in cfg.warnings)
    raw = parse_config("dbs:\n  - path: /x.db\n    replicas:\n      - url: file://$REPLICA_ROOT/a\n", expand=False)
    assert raw.dbs[0].replicas[0].url == "file://$REPLICA_ROOT/a"


def test_bad_values_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="line"):
        parse_config("dbs: [\n")
    with pytest.raises(ConfigError, match="integer"):
        parse_config("dbs:\n  - path: /a.db\n    min-checkpoint-page-count: many\n")
    with pytest.raises(ConfigError, match="path"):
        parse_config("dbs:\n  - replicas: []\n")


def test_secrets_never_in_repr() -> None:
    cfg = parse_config(
        "access-key-id: AKIDSECRET\nsecret-access-key: TOPSECRET\n"
        "dbs:\n  - path: /a.db\n    replicas:\n      - type: s3\n        bucket: b\n"
    )
    text = repr(cfg) + repr(cfg.dbs[0]) + repr(cfg.dbs[0].replicas[0])
    assert "TOPSECRET" not in text and "AKIDSECRET" not in text
    assert cfg.dbs[0].replicas[0].secret_access_key == "TOPSECRET"


def test_directory_with_glob_pattern(tmp_path: Path) -> None:
    for name in ("a.db", "b.db", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "a.db-wal").write_bytes(b"")
    cfg = parse_config(
        f"dbs:\n  - dir: {tmp_path}\n    pattern: '*.db'\n    replicas:\n      - url: file:///backups/all\n"
    )
    assert [d.path for d in cfg.dbs] == [str(tmp_path / "a.db"), str(tmp_path / "b.db")]
    assert [d.replicas[0].url for d in cfg.dbs] == ["file:///backups/all/a.db", "file:///backups/all/b.db"]


def test_keys_lsr_does_not_implement_are_refused() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config("mcp-addr: ':9090'\ndbs:\n  - path: /a.db\n")
    assert str(err.value).startswith("cannot read config: mcp-addr is not supported by lsr yet")
    assert "\n" not in str(err.value)
    # addr is implemented (Prometheus metrics): read, not refused.
    assert parse_config("addr: ':9090'\ndbs:\n  - path: /a.db\n").addr == ":9090"


def test_backend_keys_on_another_backend_are_warned_about() -> None:
    cfg = parse_config(
        "access-key-id: AKID\n"  # global S3 keys apply to S3 replicas only, and are not a mistake
        "dbs:\n  - path: /a.db\n    replicas:\n"
        "      - path: /r\n        bucket: b\n        host: h\n"
        "      - type: s3\n        bucket: b\n        key-path: /k\n"
    )
    assert cfg.warnings == [
        "config key 'bucket' in dbs[0].replicas[0] does not apply to type file (ignored)",
        "config key 'host' in dbs[0].replicas[0] does not apply to type file (ignored)",
        "config key 'key-path' in dbs[0].replicas[1] does not apply to type s3 (ignored)",
    ]
