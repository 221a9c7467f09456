"""``--workers N``: each worker copies its plain metric values into prometheus-client's files.

Every worker keeps its counters, gauges and histograms as plain numbers (``plain``) and, every
``FLUSH_INTERVAL_S`` (and just before it answers a scrape, and at shutdown), writes the values that
changed since its last flush into its own memory-mapped files in ``PROMETHEUS_MULTIPROC_DIR``:
``counter_<pid>.db``, ``histogram_<pid>.db`` and ``gauge_<mode>_<pid>.db``, with the keys
prometheus-client's own multiprocess values use. Whichever worker answers a scrape reads every
file with ``MultiProcessCollector``, which sums counters and histograms and combines gauges by their
mode, so the exposition is the one prometheus-client's multiprocess mode always gave.

Staleness: the answering worker's own values are exact; another worker's are at most one flush
interval old (1 s; longer only while that worker's event loop is too busy to run its timer). A
series is written the first time a flush sees it, at 0 if nothing happened yet, as before. A worker
killed outright (SIGKILL, out of memory) loses at most its last interval of counts; one stopped
normally flushes as it stops (``Observability.close``).

Nothing else in a worker may write these files: the gateway creates no prometheus-client metric
objects (two writers of one file would corrupt it).
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client.mmap_dict import MmapedDict, mmap_key

from gateway.observability.plain import Counter, Family, Gauge, Histogram

FLUSH_INTERVAL_S = 1.0


class _Series:
    """One child's file keys and the values last written for them."""

    __slots__ = ("keys", "last")

    def __init__(self, keys: tuple[str, ...]) -> None:
        self.keys = keys
        self.last: Any = None


class FileFlusher:
    """Writes one worker's plain values into its multiprocess files, changed values only."""

    def __init__(self, path: str, families: list[Family], pid: int | None = None) -> None:
        self.path = path
        self.families = families
        self.pid = os.getpid() if pid is None else pid
        self._files: dict[str, MmapedDict] = {}
        self._series: dict[int, _Series] = {}  # id(child): children live as long as their family

    def _file(self, family: Family) -> MmapedDict:
        prefix = f"gauge_{family.mode}" if isinstance(family, Gauge) else family.kind
        found = self._files.get(prefix)
        if found is None:
            found = self._files[prefix] = MmapedDict(os.path.join(self.path, f"{prefix}_{self.pid}.db"))
        return found

    def flush(self) -> int:
        """Write what changed since the last flush; returns how many values were written."""
        written = 0
        for family in self.families:
            if family.children:
                target = self._file(family)
                if isinstance(family, Histogram):
                    written += self._histogram(target, family)
                else:
                    written += self._scalar(target, family)
        return written

    def _scalar(self, target: MmapedDict, family: Counter | Gauge) -> int:
        written = 0
        sample = family.name + "_total" if isinstance(family, Counter) else family.name
        for values, child in list(family.children.items()):
            series = self._series.get(id(child))
            if series is None:
                key = mmap_key(family.name, sample, family.labelnames, values, family.doc)
                series = self._series[id(child)] = _Series((key,))
            value = child.value
            if value != series.last:
                target.write_value(series.keys[0], float(value), 0.0)
                series.last = value
                written += 1
        return written

    def _histogram(self, target: MmapedDict, family: Histogram) -> int:
        written = 0
        names = family.labelnames + ("le",)
        for values, child in list(family.children.items()):
            series = self._series.get(id(child))
            if series is None:
                total = mmap_key(family.name, family.name + "_sum", family.labelnames, values, family.doc)
                buckets = tuple(mmap_key(family.name, family.name + "_bucket", names, (*values, le), family.doc)
                                for le in family.le)
                series = self._series[id(child)] = _Series((total, *buckets))
            if series.last is not None and series.last[0] == child.sum and series.last[1] == child.counts:
                continue
            last = series.last[1] if series.last is not None else None
            target.write_value(series.keys[0], child.sum, 0.0)
            for i, n in enumerate(child.counts):
                if last is None or last[i] != n:
                    target.write_value(series.keys[i + 1], float(n), 0.0)
            series.last = (child.sum, list(child.counts))
            written += 1
        return written

    def close(self) -> None:
        self.flush()
        for f in self._files.values():
            f.close()
        self._files.clear()
