"""A command's long-lived state is built with the cyclic collector off, then frozen
(``startup_heap``): collections later never walk botocore's service models again."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Iterator

import pytest

from litestream_py.cmd.options import resolve_target
from litestream_py.cmd.startup import startup_heap
from litestream_py.errors import ConfigError
from support.config import write_config


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    """Each test starts and ends with nothing frozen and the collector on (pytest's own state)."""
    gc.unfreeze()
    gc.enable()
    yield
    gc.unfreeze()
    gc.enable()


def test_startup_heap_freezes_what_was_built_and_turns_the_collector_back_on() -> None:
    with startup_heap():
        assert not gc.isenabled()
        built: list[list[int]] = [[] for _ in range(1000)]
    assert gc.isenabled()
    assert gc.get_freeze_count() >= len(built)


def test_startup_heap_turns_the_collector_back_on_after_a_failure() -> None:
    with pytest.raises(ConfigError), startup_heap():
        raise ConfigError("bad config")
    assert gc.isenabled()


def test_startup_heap_leaves_a_disabled_collector_disabled() -> None:
    gc.disable()
    with startup_heap():
        pass
    assert not gc.isenabled()


def test_resolving_a_command_target_freezes_its_state(tmp_path: Path) -> None:
    config = write_config(tmp_path / "litestream.yml", tmp_path / "app.db", tmp_path / "replica")
    target = resolve_target(str(tmp_path / "app.db"), str(config), no_expand_env=False)
    assert target.replicas and gc.isenabled()
    assert gc.get_freeze_count() > 0
