"""ShipPolicy: when a replica ships, from what its storage costs."""

from __future__ import annotations

from datetime import timedelta

from litestream_py.ship_policy import MIN_SHIP_SPACING, MIN_SYNC_SPACING, QUIET_FLUSH, ShipPolicy


def test_a_local_directory_ships_every_commit_and_looks_before_each_shipment() -> None:
    policy = ShipPolicy.for_storage(local=True, sync_interval=None)
    assert policy.sync_interval == timedelta(0) and not policy.ships_early
    assert policy.spacing == MIN_SHIP_SPACING and policy.quiet_run_after == 0.0
    assert policy.checks_intact_each_sync and policy.intact_check_period is None
    assert policy.max_segment_size == 2 << 20


def test_an_object_store_at_its_default_interval_ships_early_in_larger_segments() -> None:
    policy = ShipPolicy.for_storage(local=False, sync_interval=None)
    assert policy.sync_interval == timedelta(seconds=1) and policy.ships_early
    assert policy.spacing == 1.0 and policy.quiet_run_after == QUIET_FLUSH.total_seconds()
    assert not policy.checks_intact_each_sync and policy.intact_check_period == timedelta(minutes=5)
    assert policy.max_segment_size == 8 << 20
    assert policy.is_urgent(False, lambda: True) and not policy.is_urgent(False, lambda: False)


def test_an_interval_the_user_set_is_kept_and_bounds_the_request_rate() -> None:
    policy = ShipPolicy.for_storage(local=False, sync_interval=timedelta(milliseconds=1))
    assert not policy.ships_early and policy.quiet_run_after == 0.0
    assert policy.spacing == MIN_SYNC_SPACING > 0.001  # never more often than the syncs that feed it
    assert ShipPolicy.for_storage(local=False, sync_interval=timedelta(seconds=2)).spacing == 2.0
    assert not policy.is_urgent(False, lambda: True) and policy.is_urgent(True, lambda: False)


def test_an_early_run_ships_only_full_segments_unless_asked_due_or_quiet() -> None:
    policy = ShipPolicy.for_storage(local=False, sync_interval=None)
    claimed: list[str] = []

    def due() -> bool:
        claimed.append("interval")  # claiming the interval's run spends it
        return False

    assert not policy.ships_everything(False, due, lambda: False)
    assert claimed == ["interval"]
    assert policy.ships_everything(True, due, lambda: False)
    assert claimed == ["interval"], "a barrier's request spent the interval's run"
    assert policy.ships_everything(False, due, lambda: True)
    assert ShipPolicy.for_storage(local=True, sync_interval=None).ships_everything(False, due, lambda: False)
