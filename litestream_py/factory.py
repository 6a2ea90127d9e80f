"""Builds engine objects (DB, Replica) from configuration."""

from __future__ import annotations

from datetime import timedelta

from .clients import new_client
from .compaction import DEFAULT_COMPACTION_INTERVAL
from .config import DBConfig, ReplicaConfig
from .db import DB
from .errors import ConfigError
from .replica import Replica
from .ship_policy import ShipPolicy

__all__ = ["db_from_config", "replica_from_config"]


def replica_from_config(rc: ReplicaConfig, db: DB[Replica] | None, *, read_only: bool = False) -> Replica:
    """``read_only``: for commands that only inspect or restore (see ``new_client``)."""
    client = new_client(rc, read_only=read_only)
    if not read_only and rc.age is not None:
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


def db_from_config(dbc: DBConfig, *, read_only: bool = False) -> DB[Replica]:
    db: DB[Replica] = DB(dbc.path, meta_path=dbc.meta_path)
    if dbc.monitor_interval is not None:
        db.monitor_interval = dbc.monitor_interval
    if dbc.checkpoint_interval is not None:
        db.checkpoints.interval = dbc.checkpoint_interval
    if dbc.min_checkpoint_page_count is not None:
        db.checkpoints.min_page_count = dbc.min_checkpoint_page_count
    if dbc.max_checkpoint_page_count is not None:
        db.checkpoints.max_page_count = dbc.max_checkpoint_page_count
    names = set()
    for rc in dbc.replicas:
        replica = replica_from_config(rc, db, read_only=read_only)
        if replica.name in names:
            raise ConfigError(f"cannot configure {dbc.path}: two replicas named {replica.name!r} (set name:)")
        names.add(replica.name)
        db.replicas.append(replica)
    return db
