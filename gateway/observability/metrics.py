"""The gateway's Prometheus metrics: one registry per app, every name ``llm_gateway_*``.

Label values come only from the policy (tenants, models, providers, deployments) or from fixed
vocabularies in code (status class, outcome, error kind), never from request strings, so the number
of series is bounded by the policy. ``metrics: {per_tenant: false}`` sets every tenant label to the
empty string, which Prometheus treats as no label at all: one series per model instead of per
tenant and model.

Every metric is a plain family (``plain``): children updated without locks on the event loop and
exported by a collector when scraped. With ``--workers N`` the supervisor sets
``PROMETHEUS_MULTIPROC_DIR``: every worker copies its values into memory-mapped files there every
second and before answering a scrape (``multiproc``), and whichever worker answers a scrape sums all
of them (prometheus-client multiprocess mode), so the scrape is one coherent set whatever worker
serves it, other workers' counts at most a second old. Process-local state (breakers, reload counts)
is published into the same families; shared state (DLQ depth, budgets) is read from the state
backend at scrape time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

from gateway.observability.multiproc import FileFlusher
from gateway.observability.plain import Counter, Family, Gauge, Histogram, PlainCollector

PREFIX = "llm_gateway_"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
NO_TENANT = ""  # per_tenant: false
OTHER = "other"  # a model (or anything) not named by the policy
NONE = "none"  # no provider/route was involved

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
STATE_BUCKETS = (0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
SCORE_BUCKETS = (0.0, 0.25, 0.5, 0.75, 1.0)
BREAKER_STATES = ("closed", "half_open", "open")
ERROR_KINDS = frozenset({"timeout", "connect", "5xx", "4xx", "429", "stream_cut", "protocol", "circuit_open"})


def multiproc_dir() -> str | None:
    """The multiprocess directory when this process is one of several workers, else None."""
    path = os.environ.get(MULTIPROC_ENV)
    return path if path and os.path.isdir(path) else None


def status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status < 600 else NONE


class GatewayMetrics:
    """Every metric object of one gateway; ``render()`` is what ``/metrics`` answers."""

    def __init__(self, multiproc: str | None = None) -> None:
        self.multiproc = multiproc
        self.families: list[Family] = []  # exported in this order
        reg = self.families
        self._define_requests(reg)
        self._define_upstream(reg)
        self._define_state(reg)
        self._define_server(reg)
        self._define_rollout(reg)
        self.registry = CollectorRegistry(auto_describe=True)
        self.scrape_registry = self.registry
        self.flusher: FileFlusher | None = None
        if multiproc:  # files are the source: every worker's, summed
            self.flusher = FileFlusher(multiproc, self.families)
            self.scrape_registry = CollectorRegistry(auto_describe=True)
            MultiProcessCollector(self.scrape_registry, path=multiproc)
        else:  # one process: its own process_* and python_* (one worker's alone would mislead under --workers)
            self.registry.register(PlainCollector(self.families))
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)

    def _c(self, name: str, doc: str, labels: Iterable[str], reg: list[Family]) -> Counter:
        family = Counter(PREFIX + name, doc, labels)
        reg.append(family)
        return family

    def _h(self, name: str, doc: str, labels: Iterable[str], buckets: tuple, reg: list[Family]) -> Histogram:
        family = Histogram(PREFIX + name, doc, labels, buckets)
        reg.append(family)
        return family

    def _g(self, name: str, doc: str, labels: Iterable[str], mode: str, reg: list[Family]) -> Gauge:
        """``mode``: how several workers' values combine (``livesum``: added, ``livemax``: the largest)."""
        family = Gauge(PREFIX + name, doc, labels, mode)
        reg.append(family)
        return family

    def _define_requests(self, reg: list[Family]) -> None:
        self.requests = self._c("requests", "Requests answered, by tenant, public model, provider, "
                                "status class and outcome.", ("tenant", "model", "provider", "status_class",
                                                              "outcome"), reg)
        self.in_flight = self._g("requests_in_flight", "Requests being processed now.", (), "livesum", reg)
        self.duration = self._h("request_duration_seconds", "Total request duration, streams included.",
                                ("tenant", "model"), DURATION_BUCKETS, reg)
        self.upstream_duration = self._h("upstream_duration_seconds", "Time spent waiting on upstreams "
                                         "per request (all attempts, stream chunks included).",
                                         ("model", "provider"), DURATION_BUCKETS, reg)
        self.ttft = self._h("time_to_first_token_seconds", "Time from request to the first streamed chunk "
                            "sent to the client.", ("model", "provider"), TTFT_BUCKETS, reg)
        self.overhead = self._h("overhead_seconds", "Gateway overhead: total duration minus upstream wait, "
                                "for requests that reached an upstream.", ("model",), OVERHEAD_BUCKETS, reg)
        self.tokens = self._c("tokens", "Tokens by type (prompt, completion, cached).",
                              ("tenant", "model", "type"), reg)
        self.cost = self._c("cost_usd", "Spend in USD at policy prices.", ("tenant", "model"), reg)
        self.cost_saved = self._c("cost_saved_usd", "USD not spent thanks to cache hits.", ("tenant", "model"),
                                  reg)
        self.cache = self._c("cache_requests", "Cache lookups by result (hit, miss, bypass, stale).",
                             ("tenant", "model", "result"), reg)
        self.ratelimit = self._c("ratelimit_decisions", "Rate-limit decisions.", ("tenant", "decision"), reg)
        self.budget = self._c("budget_decisions", "Budget admission outcomes.", ("tenant", "decision"), reg)
        self.downgrades = self._c("budget_downgrades", "Requests moved to a cheaper model past a soft budget.",
                                  ("tenant",), reg)
        self.routed = self._c("routed_requests", "Routing decisions of virtual models.",
                              ("model", "route", "rule"), reg)
        self.feedback = self._c("feedback", "Answer-quality feedback received.",
                                ("tenant", "model", "route", "category", "label"), reg)
        self.feedback_score = self._h("feedback_score", "Feedback scores (0 bad .. 1 good).",
                                      ("model", "route", "category"), SCORE_BUCKETS, reg)
        self.review_sampled = self._c("review_sampled", "Requests marked for human review.", ("tenant",), reg)
        self.guardrail_verdicts = self._c("guardrail_verdicts", "Guardrail verdicts by guardrail, stage (pre, "
                                          "post) and verdict.", ("guardrail", "stage", "verdict"), reg)
        self.audit_records = self._c("audit_records", "Audit records written, or dropped by reason.",
                                     ("result",), reg)

    def _define_upstream(self, reg: list[Family]) -> None:
        self.attempts = self._c("upstream_attempts", "Upstream attempts.", ("deployment",), reg)
        self.upstream_errors = self._c("upstream_errors", "Failed upstream attempts by kind.",
                                       ("deployment", "kind"), reg)
        self.retries = self._c("upstream_retries", "Attempts repeated on the same deployment.", ("deployment",),
                               reg)
        self.fallbacks = self._c("upstream_fallbacks", "Moves to another deployment of the model.", ("model",),
                                 reg)
        self.breaker = self._g("circuit_breaker_state", "1 for the state a deployment's breaker is in "
                               "(with several workers: in at least one of them).", ("deployment", "state"),
                               "livemax", reg)

    def _define_state(self, reg: list[Family]) -> None:
        self.state_errors = self._c("state_errors", "State backend calls that failed.", ("op",), reg)
        self.state_duration = self._h("state_duration_seconds", "State backend call latency.", ("op",),
                                      STATE_BUCKETS, reg)
        self.reloads = self._c("policy_reloads", "Policy reloads by result.", ("result",), reg)
        self.cache_events = self._c("cache_events", "Cache internals (stores, skipped, coalesced, backend "
                                    "errors...).", ("event",), reg)
        self.ratelimit_events = self._c("ratelimit_events", "Rate-limiter internals (backend errors, decisions "
                                        "by failure mode, queueing).", ("event",), reg)
        self.journal_depth = self._g("settle_journal_depth", "Charges waiting in replicas' journals for the "
                                     "shared ledger.", (), "livesum", reg)
        self.journal_age = self._g("settle_journal_oldest_age_seconds", "Age of the oldest charge waiting in a "
                                   "journal (0 when none).", (), "livemax", reg)
        self.dlq_records = self._c("dlq_records", "Dead-letter records written, or dropped (queue full or "
                                   "backend down).", ("result",), reg)

    def _define_server(self, reg: list[Family]) -> None:
        """The HTTP server's protection: connections refused or closed early, requests shed, pool waits."""
        self.connections_refused = self._c("client_connections_refused", "Client connections refused or closed "
                                           "early, by reason (caps, header/body/idle timeouts).", ("reason",), reg)
        self.shed = self._c("requests_shed", "Requests answered 503 at once because the gateway was full.",
                            ("reason",), reg)
        self.pool_wait = self._h("upstream_pool_wait_seconds", "Time waiting for a free upstream connection.",
                                 ("provider",), STATE_BUCKETS + (2.5, 5.0, 10.0, 30.0), reg)
        self.pool_timeouts = self._c("upstream_pool_timeouts", "Upstream attempts that found no free pooled "
                                     "connection within timeouts.pool_s.", ("provider",), reg)
        self.adaptive_limit = self._g("adaptive_concurrency_limit", "The current limit of server."
                                      "adaptive_limit (with several workers: their sum).", (), "livesum", reg)
        self.log_dropped = self._c("log_records_dropped", "Log records dropped because the writer fell behind "
                                   "(log: access, app).", ("log",), reg)
        self.evicted = self._c("memory_evictions", "Per-request records dropped from a full in-process "
                               "table before their TTL, oldest first, by table.", ("table",), reg)

    def _define_rollout(self, reg: list[Family]) -> None:
        """Rollouts, per arm (``variant``: primary, candidate) of a model's rollout block."""
        self.rollout_requests = self._c("rollout_requests", "Requests of a model with a rollout, by arm and "
                                        "outcome (ok, error, client_error, cancelled).",
                                        ("model", "variant", "outcome"), reg)
        self.rollout_duration = self._h("rollout_duration_seconds", "Request duration per arm of a rollout.",
                                        ("model", "variant"), DURATION_BUCKETS, reg)
        self.rollout_tripped = self._g("rollout_rollback_tripped", "1 while a canary's automatic rollback serves "
                                       "everything from the primary (with several workers: in at least one of "
                                       "them).", ("model",), "livemax", reg)
        self.shadow = self._c("rollout_shadow_requests", "Mirrored (shadow) calls to a candidate by result (ok, "
                              "error, skipped_concurrency, skipped_budget).", ("model", "result"), reg)
        self.shadow_agreement = self._h("rollout_shadow_agreement", "Similarity (0..1) of the candidate's "
                                        "answer to the primary's, per shadow pair.", ("model",),
                                        (0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0), reg)
        self.shadow_exact = self._c("rollout_shadow_exact_matches", "Shadow pairs whose answers were "
                                    "identical.", ("model",), reg)
        self.rollout_ttft = self._h("rollout_time_to_first_token_seconds", "Time to first token per arm of a "
                                    "rollout (streams).", ("model", "variant"), TTFT_BUCKETS, reg)
        self.rollout_tokens = self._c("rollout_tokens", "Tokens per arm of a rollout, by type (input, output).",
                                      ("model", "variant", "type"), reg)
        self.rollout_cost = self._c("rollout_cost_usd", "Spend per arm of a rollout in USD at policy prices "
                                    "(a shadow's candidate: the experiment's budget).", ("model", "variant"), reg)
        self.rollout_feedback = self._h("rollout_feedback_score", "Feedback scores (0 bad .. 1 good) per arm "
                                        "of a rollout.", ("model", "variant"), SCORE_BUCKETS, reg)

    def register(self, collector: Any) -> None:
        """Add a scrape-time collector (values read when ``/metrics`` is asked)."""
        self.scrape_registry.register(collector)

    def flush(self) -> None:
        """Several workers: write this worker's values to its files (the others read them there)."""
        if self.flusher is not None:
            self.flusher.flush()

    def close(self) -> None:
        if self.flusher is not None:
            self.flusher.close()

    def render(self) -> tuple[bytes, str]:
        self.flush()  # this worker's own counts are exact in the scrape it answers
        return generate_latest(self.scrape_registry), CONTENT_TYPE_LATEST


class ScrapeCollector:
    """Gauges computed when scraped, from a snapshot ``refresh()`` took just before."""

    def __init__(self) -> None:
        self.snapshot: dict[str, Any] = {}
        self.sources: list[Callable[[dict[str, Any]], Iterator[Metric]]] = []

    def describe(self) -> list[Metric]:
        return []  # values vary with the policy: never checked for duplicates up front

    def collect(self) -> Iterator[Metric]:
        for source in self.sources:
            yield from source(self.snapshot)


def gauge(name: str, doc: str, labels: tuple[str, ...], rows: Iterable[tuple[tuple[str, ...], float]],
          ) -> GaugeMetricFamily:
    family = GaugeMetricFamily(PREFIX + name, doc, labels=list(labels))
    for values, value in rows:
        family.add_metric(list(values), float(value))
    return family


def prepare_multiproc_dir(env: dict[str, str]) -> tuple[str, bool]:
    """For a ``--workers N`` supervisor: the directory all workers share, emptied of stale files.

    An operator-set ``PROMETHEUS_MULTIPROC_DIR`` is used (and cleared of ``*.db`` left by an earlier
    run, which would otherwise be summed in); else a private temporary directory is created, which
    the supervisor removes at exit (``True`` second).
    """
    import glob
    import tempfile

    path = env.get(MULTIPROC_ENV)
    if path:
        os.makedirs(path, exist_ok=True)
        for stale in glob.glob(os.path.join(path, "*.db")):
            os.remove(stale)
        return path, False
    path = env[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="gateway-metrics-")
    return path, True


def release_multiproc_dir(path: str, owned: bool, pids: Iterable[int]) -> None:
    """After workers exit: drop their live gauges; remove the directory if the supervisor made it."""
    import shutil

    from prometheus_client.multiprocess import mark_process_dead

    for pid in pids:
        mark_process_dead(pid, path)
    if owned:
        shutil.rmtree(path, ignore_errors=True)
