"""Lock-free metrics (``gateway.observability.plain``): same exposition, no lock on the update path.

* A gateway after fixed traffic (the openai SDK, a real mock upstream and backup, cache, rate limit
  and budget on) answers ``/metrics`` with exactly the families, help texts, types, series and
  values recorded in ``fixtures/metrics_exposition.txt`` from the prometheus-client objects the
  gateway used before (timing-dependent values masked: duration buckets and sums, the policy digest).
* Plain families render byte for byte what prometheus-client renders for the same updates.
* Two workers' files (``multiproc.FileFlusher``) scrape as the sum of both, and a flush writes only
  what changed.
* Recording a request runs no prometheus-client code and takes no lock (a profile hook sees every
  Python and C call made).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from gateway.context import Attempt, RequestContext
from gateway.observability import plain
from gateway.observability.feedback import LocalRecords
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.multiproc import FileFlusher
from gateway.observability.recorder import Recorder
from gateway.policy.loader import load_policy_text
from gateway.usage import Usage
from tests.support.mock_openai import Fault
from tests.support.policies import basic_policy
from tests.support.prom import Scrape, scrape

EXPECTED = Path(__file__).parent / "fixtures" / "metrics_exposition.txt"
MSG = [{"role": "user", "content": "hello there"}]
TIMED = re.compile(r"_seconds_(bucket|sum)$")


def masked(text: str) -> list[str]:
    """The ``llm_gateway_*`` exposition, sorted, with values that depend on timing replaced by ``~``."""
    lines = []
    for family in Scrape(text).families.values():
        if not family.name.startswith("llm_gateway_"):
            continue
        lines.append(f"# {family.name} {family.type} {family.documentation}")
        if family.name.startswith("llm_gateway_state_"):
            continue  # which state calls a request makes belongs to the stages, not to the metrics
        for s in family.samples:
            labels = dict(s.labels)
            timed = TIMED.search(s.name) and labels.get("le") != "+Inf"
            if "sha256" in labels:
                labels["sha256"] = "~"
            # evictions count a process-wide table (the settle ids of every test in this process)
            process_wide = s.name == "llm_gateway_memory_evictions_total"
            value = "~" if timed or process_wide or s.name.endswith("_timestamp_seconds") else repr(s.value)
            lines.append(f"{s.name}{sorted(labels.items())} {value}")
    return sorted(lines)


def test_scrape_after_known_traffic_matches_the_previous_exposition(make_gateway, upstream, backup):
    gw = make_gateway(basic_policy(
        upstream.url, backup.url, defaults="retry: {attempts: 1, backoff_ms: 0}\ncache: {enabled: true, ttl_s: 600}"
        "\nlogging: {access_log: 'off'}",
        extra_tenant="gamma:\n  api_keys: [sk-gamma]\n  models: [small]\n  rate_limit: {rpm: 1000, tpm: 100000}\n"
                     "  budget: {usd: 10, period: total}\n"))
    acme, gamma = gw.client("sk-acme"), gw.client("sk-gamma")
    for _ in range(2):  # a miss then a hit
        acme.chat.completions.create(model="small", messages=MSG, temperature=0)
    list(acme.chat.completions.create(model="large", messages=MSG, stream=True))
    upstream.push(Fault(500))  # fails over to the backup
    acme.chat.completions.create(model="small", messages=[{"role": "user", "content": "fail over"}])
    for _ in range(3):
        gamma.chat.completions.create(model="small", messages=[{"role": "user", "content": "no cache"}],
                                      extra_headers={"Cache-Control": "no-store"})
    for key, model in (("sk-wrong", "small"), ("sk-acme", "gpt-made-up"), ("sk-gamma", "large")):
        with pytest.raises(Exception):  # noqa: B017 - the kind of error is asserted by the exposition
            gw.client(key).chat.completions.create(model=model, messages=MSG)
    got = masked(scrape(gw.url).text)
    assert got == EXPECTED.read_text().splitlines()  # a deliberate change: write "\n".join(got), review the diff


def _twins(update) -> tuple[bytes, bytes]:  # noqa: ANN001
    """The same updates applied to plain families and to prometheus-client's own objects, rendered."""
    mine, reference = [], CollectorRegistry()
    buckets = (0.0, 0.005, 0.1, 1.0, 30.0)
    mine += [plain.Counter("t_requests", "Requests.", ("tenant", "outcome")),
             plain.Histogram("t_duration_seconds", "Duration.", ("model",), buckets),
             plain.Gauge("t_in_flight", "In flight."), plain.Counter("t_reloads", "Reloads.")]
    theirs = [prometheus_client.Counter("t_requests", "Requests.", ("tenant", "outcome"), registry=reference),
              prometheus_client.Histogram("t_duration_seconds", "Duration.", ("model",), buckets=buckets,
                                          registry=reference),
              prometheus_client.Gauge("t_in_flight", "In flight.", registry=reference),
              prometheus_client.Counter("t_reloads", "Reloads.", registry=reference)]
    update(*mine)
    update(*theirs)
    registry = CollectorRegistry()
    registry.register(plain.PlainCollector(mine))
    return generate_latest(registry), generate_latest(reference)


def test_plain_families_render_what_prometheus_client_renders():
    def update(requests, duration, in_flight, _reloads) -> None:  # noqa: ANN001
        requests.labels("acme", "ok").inc()
        requests.labels("acme", "ok").inc(2.5)
        requests.labels("beta", "error")
        for value in (0.0, 0.005, 0.0051, 0.1, 29.9, 30.0, 30.01, 1e9, -1.0):  # bounds are inclusive
            duration.labels("small").observe(value)
        duration.labels("large")
        in_flight.inc()
        in_flight.inc()
        in_flight.dec()

    prometheus_client.disable_created_metrics()  # as the gateway always rendered (no ``*_created``)
    try:
        mine, theirs = _twins(update)
    finally:
        prometheus_client.enable_created_metrics()
    assert mine == theirs
    assert b't_duration_seconds_bucket{le="0.005",model="small"} 3.0' in mine  # -1, 0, 0.005


def test_counters_refuse_negative_increments_and_wrong_label_counts():
    counter = plain.Counter("t", "T.", ("a",))
    with pytest.raises(ValueError):
        counter.labels("x").inc(-1)
    with pytest.raises(ValueError):
        counter.labels("x", "y")
    assert counter.labels(1) is counter.labels("1")


def _mp_families() -> list[plain.Family]:
    return [plain.Counter("t_requests", "Requests.", ("tenant",)),
            plain.Histogram("t_duration_seconds", "Duration.", ("model",), (0.1, 1.0)),
            plain.Gauge("t_in_flight", "In flight.", mode="livesum"),
            plain.Gauge("t_breaker", "Breaker.", ("deployment",), mode="livemax")]


def test_two_workers_files_scrape_as_their_sum(tmp_path):
    workers = [_mp_families(), _mp_families()]
    flushers = [FileFlusher(str(tmp_path), families, pid=100 + i) for i, families in enumerate(workers)]
    for i, (requests, duration, in_flight, breaker) in enumerate(workers):
        requests.labels("acme").inc(3 + i)
        duration.labels("small").observe(0.05 + i)  # worker 0: le=0.1, worker 1: 1.05, le=+Inf
        in_flight.inc(2)
        breaker.labels("d").set(i)
    requests, duration, _, _ = workers[1]
    requests.labels("beta").inc()
    writes = [f.flush() for f in flushers]
    assert writes == [4, 5]  # every series once, at first sight
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))
    s = Scrape(generate_latest(registry).decode())
    assert s.value("t_requests_total", tenant="acme") == 7  # 3 + 4: both workers
    assert s.value("t_requests_total", tenant="beta") == 1
    assert s.value("t_duration_seconds_bucket", model="small", le="0.1") == 1
    assert s.value("t_duration_seconds_bucket", model="small", le="+Inf") == 2
    assert s.value("t_duration_seconds_count", model="small") == 2
    assert s.value("t_duration_seconds_sum", model="small") == pytest.approx(1.1)
    assert s.value("t_in_flight") == 4  # livesum
    assert s.value("t_breaker", deployment="d") == 1  # livemax
    assert [f.flush() for f in flushers] == [0, 0]  # nothing changed, nothing written
    requests.labels("acme").inc()
    assert [f.flush() for f in flushers] == [0, 1]
    for f in flushers:
        f.close()
    s = Scrape(generate_latest(registry).decode())
    assert s.value("t_requests_total", tenant="acme") == 8


def _finished_request() -> RequestContext:
    policy = load_policy_text(basic_policy("http://127.0.0.1:1/v1"), env={})
    tenant, model = policy.tenants["acme"], policy.models["small"]
    ctx = RequestContext(request_id="r1", endpoint="chat", policy=policy, request=None, started=0.0,  # type: ignore[arg-type]
                         started_wall=0.0)
    ctx.tenant, ctx.public_model, ctx.model, ctx.deployment = tenant, "small", model, model.deployments[0]
    ctx.attempts = [Attempt(deployment=ctx.deployment.name, provider="upstream", started=0.0, duration_s=0.2,
                            status=200)]
    ctx.usage, ctx.status, ctx.upstream_wait_s, ctx.ttft_s = Usage(12, 4), 200, 0.2, 0.1
    ctx.cache_status, ctx.ratelimit_outcome, ctx.budget_outcome = "MISS", "ok", "ok"
    return ctx


def test_recording_a_request_takes_no_lock_and_runs_no_prometheus_client_code():
    metrics = GatewayMetrics()
    recorder, ctx = Recorder(metrics), _finished_request()
    recorder.record(ctx, 0.25, 1e-5)  # the first request of a label set creates its children
    calls: list[str] = []

    def hook(frame, event, arg) -> None:  # noqa: ANN001
        if event == "call":
            calls.append(Path(frame.f_code.co_filename).as_posix())
        elif event == "c_call":
            calls.append(f"C {getattr(arg, '__qualname__', arg)}")

    sys.setprofile(hook)
    try:
        recorder.record(ctx, 0.25, 1e-5)
        metrics.in_flight.inc()
        metrics.in_flight.dec()
    finally:
        sys.setprofile(None)
    assert calls, "the hook saw nothing"
    assert any(c.endswith("/observability/plain.py") for c in calls)
    assert not [c for c in calls if "/prometheus_client/" in c or c.endswith("/threading.py")
                or (c.startswith("C ") and ("lock" in c.lower() or "acquire" in c))], calls
    lock_type = type(threading.Lock())
    assert not any(isinstance(v, lock_type) for f in metrics.families for c in f.children.values()
                   for v in (getattr(c, s) for s in type(c).__slots__))
    s = Scrape(metrics.render()[0].decode())
    assert s.value("llm_gateway_requests_total", tenant="acme", model="small", outcome="ok") == 2
    assert s.value("llm_gateway_time_to_first_token_seconds_bucket", le="0.1") == 2


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) missing")
def test_promtool_accepts_the_exposition():
    metrics = GatewayMetrics()
    Recorder(metrics).record(_finished_request(), 0.25, 1e-5)
    metrics.state_errors.labels("get").inc()
    out = subprocess.run(["promtool", "check", "metrics"], input=metrics.render()[0], capture_output=True,
                         timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr


def test_local_feedback_records_expire_and_stay_bounded():
    now = [0.0]
    records = LocalRecords(clock=lambda: now[0], maxsize=3)
    records.put(("acme", "r1"), 10.0, ["small", "small", None, "up/small-a"])
    records.put(("beta", "r2"), 100.0, ["small", "small", None, "up/small-a"])
    assert records.get(("acme", "r1")) == ["small", "small", None, "up/small-a"]
    assert records.get(("beta", "r1")) is None  # another tenant's id
    now[0] = 10.0
    assert records.get(("acme", "r1")) is None  # expired: never returned
    records.put(("acme", "r3"), 10.0, ["a"])  # the expired oldest goes on the next store
    assert len(records) == 2 and records.get(("beta", "r2")) is not None
    for i in range(4, 7):
        records.put(("acme", f"r{i}"), 10.0, [str(i)])
    assert len(records) == 3 and records.get(("beta", "r2")) is None  # the bound pushed the oldest out
    assert records.get(("acme", "r6")) == ["6"]
