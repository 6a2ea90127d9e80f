"""Prometheus metrics of a running sidecar, named, typed and labelled as Go Litestream 0.3.13's.

Dashboards and alerts built on Go Litestream's ``litestream_*`` series keep
working when lsr replaces it, so those keep Go's exact names, types and label
names (``litestream_sync_count`` is a counter without a ``_total`` suffix, as
Go's client library exposes it). lsr's own series, ``lsr_*``, are what an
operator alerts on: each replica's lag and health, its last replicated commit,
its failures.

Every value is read at scrape time from what the working code paths keep in
memory (``stats``, positions, ``health``): a scrape makes no SQLite or storage call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable, Iterator, cast

from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

from . import health

if TYPE_CHECKING:
    from .db import DB
    from .replica import Replica

__all__ = ["SidecarCollector", "new_registry", "render", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_DB = ("db",)
_CHECKPOINT = ("db", "mode")
_REPLICA = ("db", "name")
_OPERATION = ("replica_type", "operation")


class _Family:
    """One metric family being built for a scrape."""

    def __init__(self, name: str, kind: str, doc: str, labels: tuple[str, ...]) -> None:
        self.metric = Metric(name, doc, kind)
        self.labels = labels

    def add(self, values: Iterable[str], value: float) -> None:
        self.metric.samples.append(Sample(self.metric.name, dict(zip(self.labels, values)), float(value)))


class SidecarCollector(Collector):
    """Collects every database's and replica's metrics from memory at each scrape."""

    def __init__(self, dbs: list[DB[Replica]]) -> None:
        self.dbs = dbs

    def collect(self) -> Iterator[Metric]:
        families: dict[str, _Family] = {}

        def family(name: str, kind: str, doc: str, labels: tuple[str, ...]) -> _Family:
            if name not in families:
                families[name] = _Family(name, kind, doc, labels)
            return families[name]

        self._collect_dbs(family)
        self._collect_replicas(family)
        for f in families.values():
            yield f.metric

    def _collect_dbs(self, family: Callable[[str, str, str, tuple[str, ...]], _Family]) -> None:
        for db in self.dbs:
            s, pos, label = db.stats, db.pos(), (db.path,)
            family("litestream_db_size", "gauge", "Size of the database file, in bytes.", _DB).add(label, s.db_size)
            family("litestream_wal_size", "gauge", "Size of the database's WAL file, in bytes.", _DB).add(
                label, s.wal_size)
            family("litestream_total_wal_bytes", "counter", "Bytes copied into the shadow WAL.", _DB).add(
                label, s.total_wal_bytes)
            family("litestream_shadow_wal_index", "gauge", "Index of the current shadow WAL.", _DB).add(
                label, pos.index)
            family("litestream_shadow_wal_size", "gauge", "Size of the current shadow WAL, in bytes.", _DB).add(
                label, pos.offset)
            family("lsr_db_open", "gauge",
                   "1 while lsr holds the database open (0: not created yet, or it cannot be served).", _DB).add(
                label, 1.0 if db.is_open() else 0.0)
            family("litestream_sync_count", "counter", "Syncs of the WAL into the shadow WAL.", _DB).add(
                label, s.sync_count)
            family("litestream_sync_error_count", "counter", "Syncs that failed.", _DB).add(label, s.sync_errors)
            family("litestream_sync_seconds", "counter", "Seconds spent syncing the shadow WAL.", _DB).add(
                label, s.sync_seconds)
            for mode, c in sorted(s.checkpoints.items()):
                labels = (db.path, mode)
                family("litestream_checkpoint_count", "counter", "Checkpoints run.", _CHECKPOINT).add(labels, c.count)
                family("litestream_checkpoint_error_count", "counter", "Checkpoints that failed.", _CHECKPOINT).add(
                    labels, c.errors)
                family("litestream_checkpoint_seconds", "counter", "Seconds spent checkpointing.", _CHECKPOINT).add(
                    labels, c.seconds)

    def _collect_replicas(self, family: Callable[[str, str, str, tuple[str, ...]], _Family]) -> None:
        operations: dict[tuple[str, str], tuple[int, int]] = {}
        for db in self.dbs:
            for replica in db.replicas:
                s, pos, label = replica.stats, replica.pos(), (db.path, replica.name)
                family("litestream_replica_wal_bytes", "counter", "WAL bytes written to the replica.", _REPLICA).add(
                    label, s.wal_bytes)
                family("litestream_replica_wal_index", "gauge", "The replica's current WAL index.", _REPLICA).add(
                    label, pos.index)
                family("litestream_replica_wal_offset", "gauge", "The replica's current WAL offset.", _REPLICA).add(
                    label, pos.offset)
                validations = family("litestream_replica_validation_total", "counter", "Validations of the replica.",
                                     _REPLICA + ("status",))
                for status in ("error", "ok"):
                    validations.add(label + (status,), s.validations[status])
                for operation, (count, nbytes) in replica.client.operations.counts().items():
                    key = (replica.client.type, operation)
                    total_count, total_bytes = operations.get(key, (0, 0))
                    operations[key] = (total_count + count, total_bytes + nbytes)
                self._collect_lsr(family, replica, label)
        for key, (count, nbytes) in sorted(operations.items()):
            family("litestream_replica_operation_total", "counter", "Requests made to replica storage.",
                   _OPERATION).add(key, count)
            family("litestream_replica_operation_bytes", "counter", "Bytes moved by requests to replica storage.",
                   _OPERATION).add(key, nbytes)

    @staticmethod
    def _collect_lsr(family: Callable[[str, str, str, tuple[str, ...]], _Family], replica: Replica,
                     label: tuple[str, str]) -> None:
        s = replica.stats
        lag = health.lag(replica)
        family("lsr_replica_lag_seconds", "gauge",
               "Age of the oldest commit the replica does not hold yet (0: caught up).", _REPLICA).add(label, lag)
        family("lsr_replica_max_lag_seconds", "gauge", "Lag past which the replica is unhealthy (max-lag).",
               _REPLICA).add(label, health.max_lag(replica))
        family("lsr_replica_healthy", "gauge", "1 while the replica's lag is within max-lag.", _REPLICA).add(
            label, 1.0 if lag <= health.max_lag(replica) else 0.0)
        if s.last_commit_ns is not None:
            family("lsr_replica_last_replicated_commit_timestamp_seconds", "gauge",
                   "When the newest commit on the replica was made (Unix time).", _REPLICA).add(
                label, s.last_commit_ns / 1e9)
        if s.last_success is not None:
            family("lsr_replica_last_success_timestamp_seconds", "gauge",
                   "When a shipping round last ended without error (Unix time).", _REPLICA).add(label, s.last_success)
        family("lsr_replica_consecutive_failures", "gauge", "Shipping rounds failed in a row.", _REPLICA).add(
            label, s.consecutive_failures)
        if replica.lease is not None:
            family("lsr_replica_lease_lost", "gauge",
                   "1 once another sidecar took the replica's lease: this one writes there no more.",
                   _REPLICA).add(label, 1.0 if replica.lease.lost else 0.0)
        if s.last_error_at is not None:
            family("lsr_replica_last_error_timestamp_seconds", "gauge",
                   "When the replica last failed (Unix time), labelled with the error's kind.",
                   _REPLICA + ("kind",)).add(label + (s.last_error_kind,), s.last_error_at)


def new_registry(dbs: list[DB[Replica]]) -> CollectorRegistry:
    """A registry of its own (not the process-wide default) holding the sidecar's metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SidecarCollector(dbs))
    return registry


_format_value = cast(Callable[[float], str], floatToGoString)  # as Go prints it (untyped upstream)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text format (0.0.4) with each family under its own name.

    prometheus_client's ``generate_latest`` would name every counter
    ``<name>_total``; Go's client does not, and Go's names are the contract here.
    """
    out: list[str] = []
    for metric in registry.collect():
        out.append(f"# HELP {metric.name} {_escape(metric.documentation)}\n")
        out.append(f"# TYPE {metric.name} {metric.type}\n")
        for sample in metric.samples:
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sample.labels.items())
            out.append(f"{sample.name}{{{labels}}} {_format_value(sample.value)}\n" if labels
                       else f"{sample.name} {_format_value(sample.value)}\n")
    return "".join(out).encode()
