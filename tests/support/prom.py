"""Scrape a gateway's ``/metrics`` and read exact sample values with prometheus-client's parser."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


class Scrape:
    """Samples of one scrape: ``value(name, **labels)`` sums the samples whose labels match."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples = [s for f in self.families.values() for s in f.samples]

    def value(self, name: str, **labels: str) -> float:
        return sum(s.value for s in self.samples if s.name == name and _match(s.labels, labels))

    def series(self, name: str, **labels: str) -> list[dict[str, str]]:
        return [s.labels for s in self.samples if s.name == name and _match(s.labels, labels)]

    def has(self, name: str) -> bool:
        return any(s.name == name for s in self.samples)


def _match(have: dict[str, str], want: dict[str, str]) -> bool:
    return all(have.get(k) == v for k, v in want.items())


def scrape(base_url: str, timeout: float = 10.0) -> Scrape:
    """``base_url`` is the gateway root (``http://127.0.0.1:port``)."""
    with urllib.request.urlopen(base_url.rstrip("/") + "/metrics", timeout=timeout) as resp:
        assert resp.status == 200
        assert resp.headers["content-type"].startswith("text/plain")
        return Scrape(resp.read().decode())
