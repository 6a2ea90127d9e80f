"""liblz4's functions that python-lz4 does not wrap, called through ctypes.

python-lz4's frame extension is built from liblz4's sources and exports its
symbols: the one-call frame compressor (the shipper's segments, ``codec``), the
block decoder and XXH32 (a snapshot decoded on every core, ``lz4_blocks``).
ctypes releases the interpreter while each call runs. ``LIB`` is None where
the extension does not export them (another build of python-lz4): callers then
use python-lz4's own functions.
"""

from __future__ import annotations

import ctypes

import lz4.frame._frame as _lz4_extension

__all__ = ["LIB"]


def _load() -> ctypes.CDLL | None:
    c_size_t, c_void_p, c_int, c_uint32 = ctypes.c_size_t, ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32
    prototypes: dict[str, tuple[object, list[object]]] = {
        "LZ4F_compressFrameBound": (c_size_t, [c_size_t, c_void_p]),
        "LZ4F_compressFrame": (c_size_t, [c_void_p, c_size_t, c_void_p, c_size_t, c_void_p]),
        "LZ4F_isError": (ctypes.c_uint, [c_size_t]),
        "LZ4_decompress_safe": (c_int, [ctypes.c_char_p, c_void_p, c_int, c_int]),
        "XXH32": (c_uint32, [c_void_p, c_size_t, c_uint32]),
        "XXH32_createState": (c_void_p, []),
        "XXH32_freeState": (c_int, [c_void_p]),
        "XXH32_reset": (c_int, [c_void_p, c_uint32]),
        "XXH32_update": (c_int, [c_void_p, c_void_p, c_size_t]),
        "XXH32_digest": (c_uint32, [c_void_p]),
    }
    try:
        lib = ctypes.CDLL(_lz4_extension.__file__)
        for name, (restype, argtypes) in prototypes.items():
            function = getattr(lib, name)
            function.restype = restype
            function.argtypes = argtypes
    except (OSError, AttributeError):
        return None
    return lib


LIB = _load()
