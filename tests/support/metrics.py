"""Reading a /metrics page the way Prometheus does: families, labels, values."""

from __future__ import annotations

import re
import urllib.error
import urllib.request

__all__ = ["Scrape", "scrape", "try_scrape"]

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')


_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


class Scrape:
    """A parsed /metrics page: types by family, and samples as (name, labels) -> value."""

    def __init__(self, text: str) -> None:
        self.types: dict[str, str] = {}
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ", 3)
                self.types[name] = kind
            elif line and not line.startswith("#"):
                m = _SAMPLE.match(line)
                assert m, f"unparsable sample line {line!r}"
                labels = frozenset(_LABEL.findall(m.group(2) or ""))
                self.samples[(m.group(1), labels)] = float(m.group(3))

    def label_names(self, prefix: str) -> dict[str, set[frozenset[str]]]:
        out: dict[str, set[frozenset[str]]] = {}
        for name, labels in self.samples:
            if name.startswith(prefix):
                out.setdefault(name, set()).add(frozenset(k for k, _ in labels))
        return out

    def value(self, metric: str, **labels: str) -> float:
        matches = [v for (n, ls), v in self.samples.items() if n == metric and set(labels.items()) <= set(ls)]
        assert len(matches) == 1, f"{metric}{labels}: {len(matches)} samples"
        return matches[0]


def scrape(port: int) -> Scrape:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return Scrape(reply.read().decode())


def try_scrape(port: int) -> Scrape | None:
    try:
        return scrape(port)
    except (urllib.error.URLError, ConnectionError):
        return None
