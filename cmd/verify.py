"""``lsr verify``: restore a replica to a temporary file and compare it with the live database."""

from __future__ import annotations

import click

from litestream_py.verify import verify_database, verify_replica

from .options import config_options, flag, replica_option, resolve_target, run, setup_logging


@click.command("verify")
@config_options
@replica_option
@flag("timeout", type=float, default=30.0, help="Seconds to wait for the replica to catch up.")
@click.argument("target", metavar="DB_PATH|REPLICA_URL")
def command(config_path: str | None, no_expand_env: bool, replica_name: str, timeout: float, target: str) -> None:
    """Verify replicas by restoring them to a temporary file.

    For a DB_PATH, compare each replica with the live database at the same
    position, table by table; for a REPLICA_URL, restore it and run
    integrity_check (there is nothing to compare it with). Prints OK, or the
    first table that differs; exits 1 on a mismatch.

    \b
    Examples:
      lsr verify /var/db/app.db
      lsr verify file:///var/backups/app
    """

    def body() -> None:
        setup_logging()
        t = resolve_target(target, config_path, no_expand_env, replica_name)
        failed = False
        for replica in t.replicas:
            if t.db is not None:
                result = verify_database(t.db.path, replica.reader, t.db.meta_path, timeout)
            else:
                result = verify_replica(replica.reader)
            click.echo(f"{replica.name}: {result.describe()}")
            failed = failed or not result.ok
        if failed:
            raise SystemExit(1)

    run(body)
