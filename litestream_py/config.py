"""Litestream's YAML configuration: databases, their replicas and intervals."""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import urlparse

import yaml

from .encryption import AgeKeys, parse_age
from .errors import ConfigError

__all__ = [
    "Config",
    "DBConfig",
    "ReplicaConfig",
    "LoggingConfig",
    "DEFAULT_CONFIG_PATH",
    "default_config_path",
    "load_config",
    "parse_config",
    "parse_duration",
    "expand_env",
    "expand_path",
    "is_url",
    "parse_replica_url",
]

log = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = "/etc/litestream.yml"
# Litestream's default for heartbeat-interval.
DEFAULT_HEARTBEAT_INTERVAL = timedelta(minutes=5)

_TOP_KEYS = {
    "addr", "dbs", "exec", "access-key-id", "secret-access-key", "logging", "mcp-addr",
    "socket", "heartbeat-url", "heartbeat-interval",
}
# Keys Go Litestream knows that lsr does not implement: refused, never accepted in silence.
_UNSUPPORTED_TOP_KEYS = {
    "mcp-addr": "lsr has no MCP server (remove mcp-addr)",
}
_LOGGING_KEYS = {"level", "type", "stderr"}
_DB_KEYS = {
    "path", "dir", "pattern", "meta-path", "monitor-interval", "checkpoint-interval", "dormant-after",
    "min-checkpoint-page-count", "max-checkpoint-page-count", "replicas",
}
_S3_KEYS = {"access-key-id", "secret-access-key", "region", "bucket", "endpoint", "force-path-style", "skip-verify"}
# Keys of backends lsr does not implement (abs, sftp); known so that the type error is the one reported.
_OTHER_BACKEND_KEYS = {"account-name", "account-key", "host", "user", "password", "key-path"}
_REPLICA_KEYS = {
    "type", "name", "path", "url", "retention", "retention-check-interval", "sync-interval",
    "snapshot-interval", "validation-interval", "compaction-interval", "age", "max-lag",
} | _S3_KEYS | _OTHER_BACKEND_KEYS
# Of the backend keys, those each implemented type reads; the others are warned about.
_BACKEND_KEYS = {"file": set(), "s3": _S3_KEYS}
_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
}
_ENV_RE = re.compile(r"\$(?:\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_URL_RE = re.compile(r"^\w+://")


def default_config_path() -> str:
    return os.environ.get("LITESTREAM_CONFIG") or DEFAULT_CONFIG_PATH


def parse_duration(value: Any, key: str = "duration") -> timedelta:
    """Parse a Go duration ("1s", "1h30m", "250ms"); a bare number means seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return timedelta(seconds=value)
    text = str(value).strip()
    sign = -1 if text.startswith("-") else 1
    body = text.lstrip("+-")
    if body == "0":
        return timedelta(0)
    pos, seconds = 0, 0.0
    for m in _DURATION_RE.finditer(body):
        if m.start() != pos:
            break
        seconds += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if not body or pos != len(body):
        raise ConfigError(f"cannot parse {key}: {value!r} is not a duration (use e.g. 1s, 10m, 24h)")
    return timedelta(seconds=sign * seconds)


def expand_env(text: str) -> str:
    """Expand $VAR and ${VAR} like Go's os.ExpandEnv (unset variables become empty)."""
    return _ENV_RE.sub(lambda m: os.environ.get(m.group(1) or m.group(2) or "", ""), text)


def expand_path(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def is_url(s: str) -> bool:
    return bool(_URL_RE.match(s))


def parse_replica_url(url: str) -> tuple[str, str, str]:
    """Split a replica URL into (scheme, host, path) as Litestream does."""
    u = urlparse(url)
    if not u.scheme:
        raise ConfigError(f"cannot parse replica url {url!r}: scheme required")
    if u.scheme == "file":
        return "file", "", os.path.normpath((u.netloc or "") + u.path) if (u.netloc or u.path) else ""
    return u.scheme, u.netloc, os.path.normpath(u.path).lstrip("/") if u.path not in ("", "/") else ""


@dataclass
class LoggingConfig:
    level: str = "info"
    type: str = "text"
    stderr: bool = False


@dataclass
class ReplicaConfig:
    type: str = ""
    name: str = ""
    path: str = ""
    url: str = ""
    retention: timedelta | None = None
    retention_check_interval: timedelta | None = None
    sync_interval: timedelta | None = None
    snapshot_interval: timedelta | None = None
    validation_interval: timedelta | None = None
    max_lag: timedelta | None = None
    compaction_interval: timedelta | None = None  # lsr's own key; 0 turns compaction off
    access_key_id: str = ""
    secret_access_key: str = ""
    region: str = ""
    bucket: str = ""
    endpoint: str = ""
    force_path_style: bool | None = None
    skip_verify: bool = False
    age: AgeKeys | None = None  # the replica's ``age:`` keys (see encryption)

    def replica_type(self) -> str:
        if self.url:
            return parse_replica_url(self.url)[0]
        return self.type or "file"

    def __repr__(self) -> str:
        # Never let a secret reach a log line or a traceback.
        return f"ReplicaConfig(type={self.replica_type()!r}, name={self.name!r}, url={self.url!r}, path={self.path!r})"


@dataclass
class DBConfig:
    path: str
    meta_path: str | None = None
    monitor_interval: timedelta | None = None
    checkpoint_interval: timedelta | None = None
    dormant_after: timedelta | None = None  # lsr's own: idle this long, let go of the database (0: never)
    min_checkpoint_page_count: int | None = None
    max_checkpoint_page_count: int | None = None
    replicas: list[ReplicaConfig] = field(default_factory=list)
    dir_pattern: str = ""  # set while ``path`` is a directory to expand


@dataclass
class Config:
    dbs: list[DBConfig] = field(default_factory=list)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    access_key_id: str = ""
    secret_access_key: str = ""
    addr: str = ""
    exec: str = ""
    socket: str = ""  # the control socket; empty: control.default_socket_path
    heartbeat_url: str = ""
    heartbeat_interval: timedelta = DEFAULT_HEARTBEAT_INTERVAL
    warnings: list[str] = field(default_factory=list)

    def db_config(self, path: str) -> DBConfig | None:
        path = expand_path(path)
        for dbc in self.dbs:
            if dbc.path == path:
                return dbc
        return None

    def __repr__(self) -> str:
        return f"Config(dbs={[d.path for d in self.dbs]!r})"


def _warn_unknown(section: str, data: dict[str, Any], known: set[str], warnings: list[str]) -> None:
    for key in data:
        if key not in known:
            warnings.append(f"unknown config key {key!r} in {section} (ignored)")


def _refuse_misplaced_age(data: dict[str, Any], where: str) -> None:
    """``age:`` outside a replica would encrypt nothing: refused, not warned about."""
    if "age" in data:
        raise ConfigError(
            f"cannot read config: age in {where} encrypts nothing; it belongs in a replica "
            "(dbs[].replicas[].age)"
        )


def _as_dict(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"cannot read config: {where} must be a mapping")
    return value


def _int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"cannot read config: {key} must be an integer, got {value!r}")
    return value


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"cannot read config: {key} must be true or false, got {value!r}")
    return value


def _replica(data: dict[str, Any], where: str, warnings: list[str]) -> ReplicaConfig:
    _warn_unknown(where, data, _REPLICA_KEYS, warnings)
    rc = ReplicaConfig()
    for key in ("type", "name", "path", "url", "access-key-id", "secret-access-key", "region", "bucket", "endpoint"):
        if data.get(key) is not None:
            setattr(rc, key.replace("-", "_"), str(data[key]))
    for key in ("retention", "retention-check-interval", "sync-interval", "snapshot-interval", "validation-interval",
                "max-lag", "compaction-interval"):
        if data.get(key) is not None:
            setattr(rc, key.replace("-", "_"), parse_duration(data[key], f"{where} {key}"))
    if data.get("force-path-style") is not None:
        rc.force_path_style = _bool(data["force-path-style"], f"{where} force-path-style")
    if data.get("skip-verify") is not None:
        rc.skip_verify = _bool(data["skip-verify"], f"{where} skip-verify")
    if "age" in data:
        rc.age = parse_age(data["age"], f"{where}.age")
    if rc.path and is_url(rc.path):
        raise ConfigError(f"cannot read config: {where} path cannot be a url, use the 'url' field: {rc.path}")
    if rc.url and rc.path and rc.replica_type() == "file":
        raise ConfigError(f"cannot read config: {where} sets both url and path")
    applies = _BACKEND_KEYS.get(rc.replica_type())
    if applies is not None:
        for key in sorted(set(data) & (_S3_KEYS | _OTHER_BACKEND_KEYS) - applies):
            warnings.append(f"config key {key!r} in {where} does not apply to type {rc.replica_type()} (ignored)")
    return rc


def parse_config(text: str, *, expand: bool = True, source: str = "config") -> Config:
    """Parse configuration text; unknown keys become warnings, bad values errors."""
    if expand:
        text = expand_env(text)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"cannot parse {source}: {problem}{where}") from exc
    top = _as_dict(raw, "the top level")
    cfg = Config()
    _warn_unknown("the top level", top, _TOP_KEYS, cfg.warnings)
    for key, why in _UNSUPPORTED_TOP_KEYS.items():
        if top.get(key) is not None:
            raise ConfigError(f"cannot read config: {key} is not supported by lsr yet: {why}")
    _refuse_misplaced_age(top, "the top level")
    cfg.access_key_id = str(top.get("access-key-id") or "")
    cfg.secret_access_key = str(top.get("secret-access-key") or "")
    cfg.addr = str(top.get("addr") or "")
    cfg.exec = str(top.get("exec") or "")
    cfg.socket = expand_path(str(top["socket"])) if top.get("socket") else ""
    cfg.heartbeat_url = str(top.get("heartbeat-url") or "")
    if cfg.heartbeat_url and urlparse(cfg.heartbeat_url).scheme not in ("http", "https"):
        raise ConfigError(f"cannot read {source}: heartbeat-url must be an http:// or https:// URL")
    if top.get("heartbeat-interval") is not None:
        cfg.heartbeat_interval = parse_duration(top["heartbeat-interval"], "heartbeat-interval")
        if cfg.heartbeat_interval.total_seconds() <= 0:
            raise ConfigError(f"cannot read {source}: heartbeat-interval must be positive")
    logging_data = _as_dict(top.get("logging"), "logging")
    _warn_unknown("logging", logging_data, _LOGGING_KEYS, cfg.warnings)
    cfg.logging = LoggingConfig(
        level=str(logging_data.get("level") or "info"),
        type=str(logging_data.get("type") or "text"),
        stderr=bool(logging_data.get("stderr", False)),
    )
    dbs = top.get("dbs") or []
    if not isinstance(dbs, list):
        raise ConfigError(f"cannot read {source}: dbs must be a list")
    for i, item in enumerate(dbs):
        data = _as_dict(item, f"dbs[{i}]")
        _warn_unknown(f"dbs[{i}]", data, _DB_KEYS, cfg.warnings)
        _refuse_misplaced_age(data, f"dbs[{i}]")
        if not data.get("path") and not data.get("dir"):
            raise ConfigError(f"cannot read {source}: dbs[{i}] needs a path (or a dir and a pattern)")
        if data.get("path") and data.get("dir"):
            raise ConfigError(f"cannot read {source}: dbs[{i}] sets both path and dir")
        dbc = DBConfig(path=expand_path(str(data.get("path") or data["dir"])))
        if data.get("dir"):
            dbc.dir_pattern = str(data.get("pattern") or "*.db")
        if data.get("meta-path"):
            dbc.meta_path = expand_path(str(data["meta-path"]))
        for key in ("monitor-interval", "checkpoint-interval", "dormant-after"):
            if data.get(key) is not None:
                setattr(dbc, key.replace("-", "_"), parse_duration(data[key], f"dbs[{i}] {key}"))
        for key in ("min-checkpoint-page-count", "max-checkpoint-page-count"):
            if data.get(key) is not None:
                setattr(dbc, key.replace("-", "_"), _int(data[key], f"dbs[{i}] {key}"))
        replicas = data.get("replicas") or []
        if not isinstance(replicas, list):
            raise ConfigError(f"cannot read {source}: dbs[{i}].replicas must be a list")
        for j, r in enumerate(replicas):
            rc = _replica(_as_dict(r, f"dbs[{i}].replicas[{j}]"), f"dbs[{i}].replicas[{j}]", cfg.warnings)
            rc.access_key_id = rc.access_key_id or cfg.access_key_id
            rc.secret_access_key = rc.secret_access_key or cfg.secret_access_key
            dbc.replicas.append(rc)
        cfg.dbs.extend(_expand_dir(dbc) if dbc.dir_pattern else [dbc])
    return cfg


def _expand_dir(dbc: DBConfig) -> list[DBConfig]:
    """One DBConfig per database matching ``pattern`` in ``dir``.

    Each database replicates under its own name inside every replica's path,
    so one config line serves a whole directory of databases.
    """
    if not os.path.isdir(dbc.path):
        raise ConfigError(f"cannot read config: dir {dbc.path} does not exist")
    out = []
    for path in sorted(glob.glob(os.path.join(dbc.path, dbc.dir_pattern))):
        name = os.path.basename(path)
        if not os.path.isfile(path) or name.endswith(("-wal", "-shm")):
            continue
        replicas = []
        for rc in dbc.replicas:
            copy = dataclasses.replace(rc)
            if copy.url:
                copy.url = copy.url.rstrip("/") + "/" + name
            else:
                copy.path = (copy.path.rstrip("/") + "/" + name) if copy.path else name
            replicas.append(copy)
        out.append(dataclasses.replace(dbc, path=path, dir_pattern="", replicas=replicas))
    return out


def load_config(path: str, *, expand: bool = True) -> Config:
    path = os.path.expanduser(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError as exc:
        raise ConfigError(f"cannot read config {path}: file not found (pass -config PATH)") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
    return parse_config(text, expand=expand, source=path)
