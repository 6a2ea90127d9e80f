"""Process set-up: the pages a sidecar's start-up touched once are handed back (process.release_start_up_pages)."""

from __future__ import annotations

import json
import subprocess
import sys

# Run in a fresh interpreter: it reads its own /proc/self/smaps before and after.
PROBE = r"""
import json
import numpy as np
from litestream_py import process, wal

def mappings():
    out, cur = [], None
    for line in open("/proc/self/smaps"):
        f = line.split()
        if not f[0].endswith(":"):
            cur = {"path": f[5] if len(f) > 5 else "", "perms": f[1], "rss": 0, "anon": 0}
            out.append(cur)
        elif f[0] == "Rss:":
            cur["rss"] = int(f[1])
        elif f[0] == "Anonymous:":
            cur["anon"] = int(f[1])
    return out

def kib(pred):
    return sum(m["rss"] for m in mappings() if pred(m))

openblas_code = lambda m: "openblas" in m["path"] and m["perms"] == "r-xp"
relocated = lambda m: m["path"].startswith("/") and m["perms"][3] == "p" and m["anon"] > 0
before = {"openblas": kib(openblas_code), "relocated": kib(relocated)}
released = process.release_start_up_pages()
after = {"openblas": kib(openblas_code), "relocated": kib(relocated)}
# Numpy still computes (its code faults back in): the WAL checksum chain against the reference loop.
header = wal.WALHeader.parse(bytes.fromhex("377f0682002de218000010000000000012345678cafef00d") + bytes(8), verify=False)
frames = bytearray()
for pgno in range(1, 5):
    frames += (pgno).to_bytes(4, "big") + bytes(4) + header.raw[16:24] + bytes(8) + bytes([pgno]) * 4096
sums = wal.checksum_chain(bytes(frames), header, (1, 2))
s = (1, 2)
for k in range(4):
    frame = bytes(frames[k * 4120 : (k + 1) * 4120])
    s = wal.checksum_reference(False, *s, frame[:8])
    s = wal.checksum_reference(False, *s, frame[24:])
print(json.dumps({"released": released, "before": before, "after": after,
                  "chain": [int(v) for v in sums[-1]], "reference": list(s)}))
"""


def test_start_up_pages_are_released_and_fault_back_in_and_private_pages_stay() -> None:
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["released"] > 10
    # OpenBLAS's code, touched while numpy loaded it and never called by lsr, leaves the resident set.
    assert out["before"]["openblas"] > 0 and out["after"]["openblas"] == 0, out
    # Mappings with a private (relocated) copy are left as they were: dropping them would lose it.
    assert out["after"]["relocated"] >= out["before"]["relocated"] > 0, out
    assert out["chain"] == out["reference"]
