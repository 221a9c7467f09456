"""Metric families kept as plain Python numbers: updated without locks, exported when scraped.

prometheus-client's metric objects take a ``threading.Lock`` on every update (and, with several
workers, write a memory-mapped file under it). The gateway updates its metrics only from its
event-loop thread, so a plain add is enough: a counter child's ``inc`` is one float add, a
histogram child's ``observe`` one ``bisect`` and two adds. ``PlainCollector`` turns the families
into prometheus-client ``Metric`` objects when ``/metrics`` is scraped, with exactly the names,
types, help texts, label names, bucket bounds and sample order prometheus-client's own objects
produce; with several workers ``gateway.observability.multiproc`` copies the values into the
multiprocess files instead.

The API is the subset of prometheus-client's the gateway uses: ``labels(*values)`` (positional,
children cached by their label values), ``inc``, ``dec``, ``set``, ``observe``. Not thread-safe by
design: call them from the event loop only.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.core import Metric
from prometheus_client.utils import floatToGoString


class CounterChild:
    """One counter series: a float."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self.value += amount


class GaugeChild:
    """One gauge series: a float that goes up, down, or is set."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)


class HistogramChild:
    """One histogram series: a count per bucket (not cumulative) and the sum of observations."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        # the first bucket whose bound is >= amount (``le`` is inclusive); +Inf catches the rest
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.sum += amount


class Family:
    """A metric and its children, one per tuple of label values (in first-use order)."""

    kind = ""
    sample_suffix = ""

    def __init__(self, name: str, doc: str, labelnames: Iterable[str] = ()) -> None:
        self.name = name
        self.doc = doc
        self.labelnames = tuple(labelnames)
        self.children: dict[tuple[str, ...], Any] = {}
        self._solo = None if self.labelnames else self.labels()

    def _child(self) -> Any:
        raise NotImplementedError

    def labels(self, *values: Any) -> Any:
        child = self.children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name}: expected {len(self.labelnames)} label values, got {len(values)}")
            text = tuple(str(v) for v in values)
            child = self.children.get(text)
            if child is None:
                child = self.children[text] = self._child()
        return child

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        """(sample name, labels, value) for every child, as prometheus-client orders them.

        Iterates a copy of the children (one C-level call), so a render from another thread (a
        test reading the metrics) never sees the dict change size under it.
        """
        raise NotImplementedError

    def collect(self) -> Metric:
        metric = Metric(self.name, self.doc, self.kind)
        for name, labels, value in self.samples():
            metric.add_sample(name, labels, value)
        return metric


class Counter(Family):
    kind = "counter"

    def _child(self) -> CounterChild:
        return CounterChild()

    def inc(self, amount: float = 1.0) -> None:
        self._solo.inc(amount)  # type: ignore[union-attr]

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        name = self.name + "_total"
        for values, child in list(self.children.items()):
            yield name, dict(zip(self.labelnames, values, strict=True)), child.value


class Gauge(Family):
    """``mode``: how multiprocess mode combines the workers' values (``livesum``, ``livemax``...)."""

    kind = "gauge"

    def __init__(self, name: str, doc: str, labelnames: Iterable[str] = (), mode: str = "livesum") -> None:
        self.mode = mode
        super().__init__(name, doc, labelnames)

    def _child(self) -> GaugeChild:
        return GaugeChild()

    def inc(self, amount: float = 1.0) -> None:
        self._solo.inc(amount)  # type: ignore[union-attr]

    def dec(self, amount: float = 1.0) -> None:
        self._solo.dec(amount)  # type: ignore[union-attr]

    def set(self, value: float) -> None:
        self._solo.set(value)  # type: ignore[union-attr]

    def value(self) -> float:
        """The unlabelled gauge's current value (in this process)."""
        return self._solo.value  # type: ignore[union-attr]

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        for values, child in list(self.children.items()):
            yield self.name, dict(zip(self.labelnames, values, strict=True)), child.value


class Histogram(Family):
    kind = "histogram"

    def __init__(self, name: str, doc: str, labelnames: Iterable[str], buckets: Iterable[float]) -> None:
        bounds = [float(b) for b in buckets]
        if bounds != sorted(bounds):
            raise ValueError(f"{name}: buckets not in sorted order")
        if not bounds or bounds[-1] != math.inf:
            bounds.append(math.inf)
        self.bounds = tuple(bounds)
        self.le = tuple(floatToGoString(b) for b in self.bounds)
        super().__init__(name, doc, labelnames)

    def _child(self) -> HistogramChild:
        return HistogramChild(self.bounds)

    def observe(self, amount: float) -> None:
        self._solo.observe(amount)  # type: ignore[union-attr]

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        bucket, count, total = self.name + "_bucket", self.name + "_count", self.name + "_sum"
        for values, child in list(self.children.items()):
            labels = dict(zip(self.labelnames, values, strict=True))
            acc = 0.0
            for le, n in zip(self.le, child.counts, strict=True):
                acc += n
                yield bucket, {**labels, "le": le}, acc
            yield count, labels, acc
            if self.bounds[0] >= 0:
                yield total, labels, child.sum


class PlainCollector:
    """Exports plain families to a prometheus-client registry, read when scraped."""

    def __init__(self, families: list[Family]) -> None:
        self.families = families

    def describe(self) -> list[Metric]:
        return [Metric(f.name, f.doc, f.kind) for f in self.families]

    def collect(self) -> Iterator[Metric]:
        for family in self.families:
            yield family.collect()
