"""``lsr status``: ask the running sidecar how each database and replica is doing."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import click

from litestream_py import control
from litestream_py.errors import ControlError
from litestream_py.follow import read_status

from .options import config_options, format_duration, json_option, optional_config, print_json, print_table, run


@click.command("status")
@config_options
@json_option
@click.argument("db_path", required=False, default="")
def command(config_path: str | None, no_expand_env: bool, as_json: bool, db_path: str) -> None:
    """Show how the running sidecar's databases and replicas are doing.

    Per database: generation, position, last checkpoint; per replica: position,
    lag, last shipment, last error, next snapshot and retention run.

    \b
    Examples:
      lsr status
      lsr status -json -config /etc/litestream.yml /var/db/app.db
    """

    def body() -> None:
        try:
            report = control.status(optional_config(config_path, no_expand_env), db_path)
        except ControlError:
            followed = read_status(db_path) if db_path else None
            if followed is None:
                raise
            _print_follower(followed, as_json)  # a standby: its follower has no socket
            return
        if as_json:
            print_json(report)
            return
        for i, db in enumerate(report["dbs"]):
            if i:
                click.echo()
            click.echo(f"{db['path']}  {'healthy' if db['healthy'] else 'UNHEALTHY'}")
            click.echo(f"  generation {db['generation'] or '-'}  position {db['position'] or '-'}  "
                       f"last checkpoint {db['last_checkpoint'] or '-'}")
            print_table(["replica", "type", "position", "lag", "last shipment", "last error", "next snapshot",
                         "next retention", "compaction"], [_replica_row(r) for r in db["replicas"]])

    run(body)


def _replica_row(r: dict[str, Any]) -> list[str]:
    error = r["last_error"]
    failing = f"{error['kind']} at {error['at']}: {error['message']}" if error else "-"
    return [r["name"], r["type"], r["position"] or "-", format_duration(timedelta(seconds=r["lag_seconds"])),
            r["last_shipment"] or "-", failing, r["next_snapshot"] or "-", r["next_retention"] or "-",
            _compaction(r.get("compaction"))]


def _compaction(c: dict[str, Any] | None) -> str:
    """What compaction did, in a few words: segments merged into how many, and when it last looked."""
    if c is None:
        return "off"
    return f"{c['segments_merged']} segments into {c['segments_written']} (last pass {c['last_pass'] or '-'})"


def _print_follower(status: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json({"follower": status})
        return
    state = "following" if status.get("following") else "stopped"
    click.echo(f"{status.get('standby')}  standby, {state} {status.get('replica') or '-'} (pid {status.get('pid')})")
    click.echo(f"  position {status.get('position') or '-'}  applied segments {status.get('applied_segments')}  "
               f"as of {status.get('updated')}")
    if status.get("error"):
        click.echo(f"  ERROR {status['error']}")
