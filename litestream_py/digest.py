"""Digests that name or version things: a control socket, a file replica's lease.

BLAKE2b from CPython's own ``_blake2`` module, which is what ``hashlib.blake2b``
is: importing hashlib (and secrets or hmac, which import it) loads OpenSSL's
libcrypto, several MiB of a sidecar's resident memory, for a few hashes of
short strings (tests/test_sidecar_footprint.py). What needs SHA-256 itself
(verify's table digests, age's recipient fingerprints) imports hashlib where
it is used.
"""

from __future__ import annotations

try:
    from _blake2 import blake2b
except ImportError:  # a CPython built without it: hashlib's then comes from OpenSSL
    from hashlib import blake2b

__all__ = ["digest_hex"]


def digest_hex(data: bytes, size: int = 32) -> str:
    """The hex digest of ``data``, ``size`` bytes long (2 * size characters)."""
    return blake2b(data, digest_size=size).hexdigest()
