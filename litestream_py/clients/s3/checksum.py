"""CRC32C, the checksum lsr stores with every object it writes (``x-amz-meta-crc32c``).

It comes from the ``crc32c`` package's C extension, loaded on its own: the
package's ``__init__`` asks ``importlib.metadata`` for its own version, which
imports a dozen modules and scans every distribution on ``sys.path``, a large
share of a restore's start-up (docs/bench.md). Where the extension cannot be
found that way, the package is imported as usual.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from typing import Callable

__all__ = ["crc32c", "loaded_alone"]

_EXTENSION = "crc32c._crc32c"


def _extension_alone() -> Callable[..., int] | None:
    spec = importlib.util.find_spec("crc32c")  # finds the package without running it
    for folder in (spec.submodule_search_locations or []) if spec else []:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(folder, "_crc32c" + suffix)
            if not os.path.isfile(path):
                continue
            loader = importlib.machinery.ExtensionFileLoader(_EXTENSION, path)
            ext_spec = importlib.util.spec_from_file_location(_EXTENSION, path, loader=loader)
            if ext_spec is None:
                return None
            module = importlib.util.module_from_spec(ext_spec)
            loader.exec_module(module)
            # A later ``import crc32c`` then reuses this module instead of loading it twice.
            sys.modules.setdefault(_EXTENSION, module)
            fn: Callable[..., int] = module.crc32c
            return fn
    return None


def _load() -> tuple[Callable[..., int], bool]:
    try:
        fn = _extension_alone()
    except (ImportError, OSError, AttributeError):
        fn = None
    if fn is not None:
        return fn, True
    import crc32c as package

    return package.crc32c, False


_LOADED = _load()
# crc32c(data, value=0): the CRC32C of ``data``, continuing from ``value`` (the CRC of what came before).
crc32c: Callable[..., int] = _LOADED[0]
loaded_alone: bool = _LOADED[1]  # False: the extension came through the package's own import
