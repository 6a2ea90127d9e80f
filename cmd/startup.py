"""The process's start-up heap, shared by the command group and the subcommands."""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def startup_heap() -> Iterator[None]:
    """Build a process's long-lived state (imports, config, databases, clients)
    without the cyclic collector, then freeze it.

    Imports and botocore's service models are each ~10^5 objects that live as
    long as the process: the collections they would set off find nothing to
    free, and every full collection afterwards would walk them again, for
    nothing (docs/bench.md, Restore). Frozen, they are not scanned even by the
    first collection after.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
