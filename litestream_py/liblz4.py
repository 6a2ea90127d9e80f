"""liblz4's functions that python-lz4 does not wrap, called through ctypes.

python-lz4's frame extension is built from liblz4's sources and exports its
symbols: the one-call frame compressor (the shipper's segments, ``codec``), the
block decoder and XXH32 (a snapshot decoded on every core, ``lz4_blocks``).
ctypes releases the interpreter while each call runs. ``LIB`` is None where
the extension does not export them (another build of python-lz4): callers then
use python-lz4's own functions.

``XXH32_STREAM`` holds XXH32's streaming functions (a frame's content checksum,
block after block): the system's libxxhash where it is installed, whose
XXH32_update is much faster than the copy bundled in python-lz4's extension
(docs/bench.md, Restore), else ``LIB``. A state is only ever handed
to the library that made it.
"""

from __future__ import annotations

import ctypes

import lz4.frame._frame as _lz4_extension

__all__ = ["LIB", "XXH32_STREAM"]

# The shared library's name on Linux distributions (Debian's and Ubuntu's libxxhash0, Fedora's xxhash-libs).
XXHASH_LIBRARY = "libxxhash.so.0"


_size_t, _void_p, _int, _uint32 = ctypes.c_size_t, ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32
_XXH32_STREAM_PROTOTYPES: dict[str, tuple[object, list[object]]] = {
    "XXH32_createState": (_void_p, []),
    "XXH32_freeState": (_int, [_void_p]),
    "XXH32_reset": (_int, [_void_p, _uint32]),
    "XXH32_update": (_int, [_void_p, _void_p, _size_t]),
    "XXH32_digest": (_uint32, [_void_p]),
}
_LZ4_PROTOTYPES: dict[str, tuple[object, list[object]]] = {
    "LZ4F_compressFrameBound": (_size_t, [_size_t, _void_p]),
    "LZ4F_compressFrame": (_size_t, [_void_p, _size_t, _void_p, _size_t, _void_p]),
    "LZ4F_isError": (ctypes.c_uint, [_size_t]),
    "LZ4_decompress_safe": (_int, [ctypes.c_char_p, _void_p, _int, _int]),
    "XXH32": (_uint32, [_void_p, _size_t, _uint32]),
    **_XXH32_STREAM_PROTOTYPES,
}


def _load(path: str, prototypes: dict[str, tuple[object, list[object]]]) -> ctypes.CDLL | None:
    """The shared library at ``path`` with ``prototypes`` declared; None if it or one of them is missing."""
    try:
        lib = ctypes.CDLL(path)
        for name, (restype, argtypes) in prototypes.items():
            function = getattr(lib, name)
            function.restype = restype
            function.argtypes = argtypes
    except (OSError, AttributeError):
        return None
    return lib


LIB = _load(_lz4_extension.__file__, _LZ4_PROTOTYPES)
XXH32_STREAM = _load(XXHASH_LIBRARY, _XXH32_STREAM_PROTOTYPES) or LIB
