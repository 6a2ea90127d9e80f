"""Options and helpers shared by the subcommands.

Every flag is spelled as Litestream spells it (one dash) and also with two dashes.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, NoReturn, TypeVar

import click

from litestream_py.config import Config, ReplicaConfig, default_config_path, is_url, load_config
from litestream_py.errors import ConfigError, LitestreamError
from litestream_py.factory import target_from_config, targets_from_config
from litestream_py.health import rfc3339
from litestream_py.paths import meta_dir
from litestream_py.replica_client import ReplicaTarget

from .startup import startup_heap

F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger("lsr")


def flag(name: str, dest: str | None = None, **kwargs: Any) -> Callable[[F], F]:
    """A click option accepted as -name and --name; its help shows a default that says something."""
    kwargs.setdefault("show_default", kwargs.get("default") not in (None, "", False))
    return click.option(f"-{name}", f"--{name}", dest or name.replace("-", "_"), **kwargs)


def config_options(f: F) -> F:
    f = flag("no-expand-env", is_flag=True, help="Do not expand $VAR / ${VAR} in the config file.")(f)
    f = flag("config", "config_path", metavar="PATH", default=None,
             help="Config file (default $LITESTREAM_CONFIG or /etc/litestream.yml).")(f)
    return f


def replica_option(f: F) -> F:
    return flag("replica", "replica_name", metavar="NAME", default="", help="Only this replica.")(f)


# What every LogRecord carries; anything else came through ``extra=`` (db, replica, ...).
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JSONFormatter(logging.Formatter):
    """One JSON object per line, as Go Litestream's JSON logs: time (RFC 3339,
    milliseconds, UTC), level, msg, and the record's structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        t = datetime.fromtimestamp(record.created, timezone.utc)
        entry: dict[str, Any] = {
            "time": t.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": "WARN" if record.levelno == logging.WARNING else record.levelname,  # Go's spelling
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                entry[key] = value if isinstance(value, (int, float, bool)) or value is None else str(value)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        import json  # here and in print_json: a restore's start-up need not import it

        return json.dumps(entry, ensure_ascii=False)


def setup_logging(config: Config | None = None, verbose: bool = False) -> None:
    level_name = (config.logging.level if config else "info").upper()
    level = {"DEBUG": logging.DEBUG, "WARN": logging.WARNING, "WARNING": logging.WARNING,
             "ERROR": logging.ERROR}.get(level_name, logging.INFO)
    if verbose:
        level = logging.DEBUG
    stream = sys.stderr if (config and config.logging.stderr) else sys.stdout
    handler = logging.StreamHandler(stream)
    if config and config.logging.type == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    # watchdog reports its own shutdown races as errors; they are harmless.
    logging.getLogger("watchdog").setLevel(logging.CRITICAL)


def _logs_json() -> bool:
    return any(isinstance(h.formatter, JSONFormatter) for h in logging.getLogger().handlers)


def read_config(config_path: str | None, no_expand_env: bool, verbose: bool = False) -> Config:
    """Load the config file and log as it says."""
    config = load_config(config_path or default_config_path(), expand=not no_expand_env)
    setup_logging(config, verbose)
    for warning in config.warnings:
        log.warning("%s", warning)
    return config


def optional_config(config_path: str | None, no_expand_env: bool) -> Config | None:
    """The config given, or the default one if it exists (commands that also work without one)."""
    if config_path is None and not os.path.exists(default_config_path()):
        return None
    return read_config(config_path, no_expand_env)


def json_option(f: F) -> F:
    return flag("json", "as_json", is_flag=True, help="Print JSON (times in RFC 3339) instead of a table.")(f)


def print_json(value: Any) -> None:
    import json

    click.echo(json.dumps(value, indent=2))


@dataclass(frozen=True)
class DBPaths:
    """A configured database's files, as the inspect and restore commands read them
    (without the monitor's machinery: opening nothing, importing no SQLite)."""

    path: str
    meta_path: str

    @property
    def wal_path(self) -> str:
        return self.path + "-wal"


@dataclass
class Target:
    """What an inspect/restore command works on: a database from the config, or a replica URL."""

    db: DBPaths | None
    replicas: list[ReplicaTarget]


def resolve_target(
    arg: str, config_path: str | None, no_expand_env: bool, replica_name: str = "", verbose: bool = False,
) -> Target:
    with startup_heap():
        return _resolve_target(arg, config_path, no_expand_env, replica_name, verbose)


def _resolve_target(arg: str, config_path: str | None, no_expand_env: bool, replica_name: str, verbose: bool) -> Target:
    if is_url(arg):
        if config_path:
            raise ConfigError("cannot use a replica URL together with -config")
        return Target(None, [target_from_config(ReplicaConfig(url=arg))])
    config = read_config(config_path, no_expand_env, verbose)
    dbc = config.db_config(arg)
    if dbc is None:
        raise ConfigError(f"cannot find database {arg} in the config (check the path, or pass -config)")
    path = os.path.abspath(dbc.path)
    db = DBPaths(path, meta_dir(path, dbc.meta_path))
    replicas = targets_from_config(dbc)
    if replica_name:
        replicas = [r for r in replicas if r.name == replica_name]
        if not replicas:
            raise ConfigError(f"cannot find replica {replica_name!r} for database {db.path}")
    return Target(db, replicas)


def run(fn: Callable[[], Any]) -> Any:
    """Turn engine errors into one line on stderr and exit status 1 (under JSON
    logging, one JSON log line, so that every line a log pipeline reads parses)."""
    try:
        return fn()
    except LitestreamError as exc:
        _fail(str(exc), exc)
    except OSError as exc:
        _fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), exc)


def _fail(message: str, exc: BaseException) -> NoReturn:
    if _logs_json():
        log.error("%s", message)
        raise SystemExit(1) from exc
    raise click.ClickException(message) from exc


def print_table(header: list[str], rows: list[list[str]]) -> None:
    """Columns aligned like Go's tabwriter (two spaces of padding)."""
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]
    for row in [header] + rows:
        cells = [c.ljust(w + 2) for c, w in zip(row[:-1], widths)] + [row[-1]]
        click.echo("".join(cells))


Cell = str | int | datetime | timedelta | list[str] | None


def print_rows(header: list[str], rows: list[list[Cell]], as_json: bool) -> None:
    """A table, or with ``as_json`` a JSON list of objects with the same fields
    (times in RFC 3339 to the microsecond, durations in seconds)."""
    if as_json:
        keys = [h.replace(" ", "_") for h in header]
        print_json([{k: _json_cell(c) for k, c in zip(keys, row)} for row in rows])
    else:
        print_table(header, [[_table_cell(c) for c in row] for row in rows])


def _json_cell(c: Cell) -> Any:
    if isinstance(c, datetime):
        return rfc3339(c)
    if isinstance(c, timedelta):
        return c.total_seconds()
    return c


def _table_cell(c: Cell) -> str:
    if isinstance(c, datetime):
        return format_time(c)
    if isinstance(c, timedelta):
        return format_duration(c)
    if isinstance(c, list):
        return ",".join(c)
    return "" if c is None else str(c)


def format_time(t: datetime | None) -> str:
    if t is None:
        return ""
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_duration(d: timedelta) -> str:
    """A duration the way Go prints one, truncated as Litestream does (e.g. 1.2s, 3m4s)."""
    total = d.total_seconds()
    sign = "-" if total < 0 else ""
    total = abs(total)
    if total == 0:
        return "0s"
    if total < 1:
        if total >= 1e-3:
            return f"{sign}{int(total * 1e3)}ms"
        return f"{sign}{int(total * 1e6)}µs"
    if total < 10:
        return f"{sign}{int(total * 10) / 10:g}s"
    secs = int(total)
    h, rem = divmod(secs, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{sign}{h}h{m}m{s}s"
    if m:
        return f"{sign}{m}m{s}s"
    return f"{sign}{s}s"
