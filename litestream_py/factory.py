"""Builds engine objects (DB, Replica, ReplicaTarget) from configuration."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from .clients import new_client
from .config import DBConfig, ReplicaConfig
from .encryption import AgeReader
from .errors import ConfigError
from .replica_client import ReplicaTarget

if TYPE_CHECKING:
    from .db import DB
    from .replica import Replica

__all__ = ["db_from_config", "replica_from_config", "target_from_config", "targets_from_config"]


def target_from_config(rc: ReplicaConfig) -> ReplicaTarget:
    """A replica to read only: inspect, verify, restore, follow (see ``new_client``'s read_only)."""
    client = new_client(rc, read_only=True)
    return ReplicaTarget(rc.name or client.type, client, AgeReader(client, rc.age))


def replica_from_config(rc: ReplicaConfig, db: DB[Replica]) -> Replica:
    """A replica that ``db`` writes to, with the shipping settings its client type calls for."""
    # Here, not at the top: reading a replica (``target_from_config``) needs none of the writing side.
    from .compaction import DEFAULT_COMPACTION_INTERVAL
    from .replica import Replica
    from .ship_policy import ShipPolicy

    client = new_client(rc)
    if rc.age is not None:
        # Refused at start: a replica the operator means to encrypt must never be written in plaintext.
        if not rc.age.recipients:
            raise ConfigError(
                f"cannot replicate to {client.describe()}: age has no recipients "
                "(add age.recipients: the public keys, age1..., to encrypt to)"
            )
        if rc.validation_interval and not rc.age.identities:
            raise ConfigError(
                f"cannot replicate to {client.describe()}: validation-interval restores the encrypted "
                "replica, which needs age.identities (or remove validation-interval)"
            )
    replica = Replica(db, client, rc.name, age=rc.age)
    # A local directory costs nothing per write; object stores bill per request.
    replica.ship = ShipPolicy.for_storage(local=client.type == "file", sync_interval=rc.sync_interval)
    if rc.retention is not None:
        replica.retention = rc.retention
    if rc.retention_check_interval is not None:
        replica.retention_check_interval = rc.retention_check_interval
    replica.snapshot_interval = rc.snapshot_interval
    replica.max_lag = rc.max_lag
    replica.validation_interval = rc.validation_interval
    interval = DEFAULT_COMPACTION_INTERVAL if rc.compaction_interval is None else rc.compaction_interval
    replica.compaction_interval = interval if interval > timedelta(0) else None
    return replica


def db_from_config(dbc: DBConfig) -> DB[Replica]:
    from .db import DB

    db: DB[Replica] = DB(dbc.path, meta_path=dbc.meta_path)
    if dbc.monitor_interval is not None:
        db.monitor_interval = dbc.monitor_interval
    if dbc.checkpoint_interval is not None:
        db.checkpoints.interval = dbc.checkpoint_interval
    if dbc.dormant_after is not None:
        db.dormant_after = dbc.dormant_after.total_seconds()
    if dbc.min_checkpoint_page_count is not None:
        db.checkpoints.min_page_count = dbc.min_checkpoint_page_count
    if dbc.max_checkpoint_page_count is not None:
        db.checkpoints.max_page_count = dbc.max_checkpoint_page_count
    db.replicas = [replica_from_config(rc, db) for rc in dbc.replicas]
    _check_names(dbc, [r.name for r in db.replicas])
    return db


def targets_from_config(dbc: DBConfig) -> list[ReplicaTarget]:
    """A database's replicas, to read only."""
    targets = [target_from_config(rc) for rc in dbc.replicas]
    _check_names(dbc, [t.name for t in targets])
    return targets


def _check_names(dbc: DBConfig, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ConfigError(f"cannot configure {dbc.path}: two replicas named {name!r} (set name:)")
        seen.add(name)
