"""``lsr restore``: recover a database from a replica."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Iterator

import click

from litestream_py.errors import ConfigError, NoGenerationError, OutputExistsError
from litestream_py.process import configure_process_for_restore
from litestream_py.restore import DEFAULT_RESTORE_PARALLELISM, RestoreOptions, restore_from_replicas

from .options import config_options, flag, log, replica_option, resolve_target, run, setup_logging


def parse_timestamp(value: str) -> datetime:
    """RFC 3339 with optional fractional seconds and any UTC offset."""
    try:
        t = datetime.fromisoformat(value.strip().replace("z", "Z"))
    except ValueError as exc:
        raise ConfigError(
            f"cannot parse -timestamp {value!r}: use RFC 3339, e.g. 2024-01-02T15:04:05.123Z"
        ) from exc
    if t.tzinfo is None:
        raise ConfigError(f"cannot parse -timestamp {value!r}: add a UTC offset such as Z or +02:00")
    return t.astimezone(timezone.utc)


def parse_index(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value, 16)
    except ValueError as exc:
        raise ConfigError(f"cannot parse -index {value!r}: use a hexadecimal WAL index such as 0000002a") from exc


@click.command("restore")
@config_options
@replica_option
@flag("o", "output", metavar="PATH", default=None, help="Output path (default: the database's own path).")
@flag("generation", metavar="NAME", default="", help="Restore from this generation.")
@flag("index", metavar="HEX", default=None, help="Restore through this WAL index (hexadecimal).")
@flag("timestamp", metavar="RFC3339", default=None, help="Restore to this point in time.")
@flag("parallelism", type=click.IntRange(min=1), default=DEFAULT_RESTORE_PARALLELISM,
      help="WAL segments downloaded in parallel.")
@flag("if-db-not-exists", is_flag=True, help="Exit 0 if the output database already exists.")
@flag("if-replica-exists", is_flag=True, help="Exit 0 if no backup is found.")
@flag("v", "verbose", is_flag=True, help="Verbose output.")
@click.option("-f", "-follow", "--follow", "follow", is_flag=True,
              help="Keep STANDBY (-o) current: apply new WAL segments until SIGTERM (see README, Standby).")
@flag("follow-interval", metavar="DURATION", default="1s",
      help="With -f, how often to poll the replica (one LIST each); file replicas also use inotify.")
@click.argument("target", metavar="DB_PATH|REPLICA_URL")
def command(config_path: str | None, no_expand_env: bool, replica_name: str, output: str | None,
            generation: str, index: str | None, timestamp: str | None, parallelism: int,
            if_db_not_exists: bool, if_replica_exists: bool, verbose: bool, follow: bool,
            follow_interval: str, target: str) -> None:
    """Restore a database from its replicas or a replica URL.

    To the latest state, a WAL index, or a point in time. Nothing is written at
    the output path unless the restore completes. With -f, keep following the
    replica into a read-only warm standby (see README, Standby and failover).

    \b
    Examples:
      lsr restore -o /tmp/app.db /var/db/app.db
      lsr restore -o /tmp/app.db -timestamp 2024-05-01T09:19:50Z s3://my-backups/app
      lsr restore -f -o /srv/standby/app.db file:///var/backups/app
    """

    def body() -> None:
        setup_logging(verbose=verbose)
        if follow:
            follow_replica(target, config_path, no_expand_env, replica_name, output, follow_interval,
                           bool(generation or index or timestamp))
            return
        configure_process_for_restore()
        ts = parse_timestamp(timestamp) if timestamp else None
        idx = parse_index(index)
        if idx is not None and ts is not None:
            raise ConfigError("cannot restore: -index and -timestamp are mutually exclusive")
        if idx is not None and not generation:
            raise ConfigError("cannot restore to an index: -generation is required with -index")
        t = resolve_target(target, config_path, no_expand_env, replica_name, verbose)
        out = output or (t.db.path if t.db else None)
        if not out:
            raise ConfigError("cannot restore from a replica URL without -o PATH")
        opts = RestoreOptions(output_path=out, generation=generation, index=idx, timestamp=ts, parallelism=parallelism)
        try:
            with progress_bar(opts):
                restore_from_replicas(t.replicas, opts)
        except OutputExistsError as exc:
            if if_db_not_exists:
                log.info("database already exists, skipping: %s", out)
                return
            elsewhere = "choose another -o path" if output else "pass -o PATH to restore elsewhere"
            raise OutputExistsError(f"{exc} (remove it, {elsewhere}, or pass -if-db-not-exists to skip)") from exc
        except NoGenerationError:
            if not if_replica_exists:
                raise
            log.info("no matching backups found")

    run(body)


@contextmanager
def progress_bar(opts: RestoreOptions) -> Iterator[None]:
    """On a terminal, a bar that follows the segments applied."""
    if not sys.stdout.isatty():
        yield
        return
    with click.progressbar(length=1, label="restoring", file=sys.stdout) as bar:
        def progress(done: int, total: int) -> None:
            bar.length = max(total, 1)
            bar.update(done - bar.pos)
        opts.progress = progress
        yield


def follow_replica(target: str, config_path: str | None, no_expand_env: bool, replica_name: str,
                   output: str | None, interval: str, pinned: bool) -> None:
    """``restore -f``: restore (or resume) STANDBY, then follow until SIGTERM or SIGINT."""
    from litestream_py.config import parse_duration
    from litestream_py.follow import Follower

    from .replicate import StopSignal

    stop = StopSignal()
    if pinned:
        raise ConfigError("cannot follow: -generation, -index and -timestamp do not apply to -f")
    if not output:
        raise ConfigError("cannot follow without -o STANDBY: the standby must not be the primary's path")
    every = parse_duration(interval)
    if every.total_seconds() <= 0:
        raise ConfigError(f"cannot use -follow-interval {interval!r}: it must be positive")
    t = resolve_target(target, config_path, no_expand_env, replica_name)
    if t.db is not None and os.path.abspath(output) == os.path.abspath(t.db.path):
        raise ConfigError(f"cannot follow into {output}: it is the primary database's own path")
    if not t.replicas:
        raise ConfigError("cannot follow: no replica configured")
    replica = t.replicas[0]
    client = replica.client
    root = getattr(client, "root", "") if client.type == "file" else ""
    # Read through replica.reader, which decrypts an age replica (given the identity).
    follower = Follower(replica.reader, output, stop, replica=client.describe(), interval=every, watch_dir=root)
    follower.run()
