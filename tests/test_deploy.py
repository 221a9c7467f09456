"""deploy/: alert rules through promtool, manifests and dashboard checked for structure and coherence.

Docker and Kubernetes are not available here, so the files are parsed and cross-checked: every
metric an alert or a panel queries is one the gateway exports, the policy shipped in the ConfigMap
is the one compose mounts and it loads, probes hit the real endpoints, and a ConfigMap-style
symlink swap is picked up by the running gateway's file poll.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from gateway.observability.gauges import LiveGauges
from gateway.policy.loader import load_policy, load_policy_text
from gateway.services import build_services
from tests.support.harness import Gateway
from tests.support.policies import basic_policy

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
PROMTOOL = shutil.which("promtool")
METRIC = re.compile(r"\bllm_gateway_[a-z0-9_]+")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian package prometheus) missing")


def promtool(*args: str) -> subprocess.CompletedProcess:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=DEPLOY / "prometheus", capture_output=True, text=True,
                          timeout=60)


@needs_promtool
def test_promtool_check_rules() -> None:
    out = promtool("check", "rules", "alerts.yaml")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


@needs_promtool
def test_promtool_unit_tests_of_the_alerts() -> None:
    out = promtool("test", "rules", "alerts_test.yaml")
    assert out.returncode == 0, out.stdout + out.stderr


@needs_promtool
def test_promtool_check_config() -> None:
    out = promtool("check", "config", "prometheus.yml")
    assert out.returncode == 0, out.stdout + out.stderr


def exported_sample_names() -> set[str]:
    """Every sample name the gateway can export, shared-state gauges included."""
    policy = load_policy_text(basic_policy("http://127.0.0.1:1/v1"), env={})
    services = build_services(policy)
    metrics = services.metrics
    live = LiveGauges(services)
    live.collector.snapshot = {"dlq_depth": 0, "budget": {"acme": {"spent": 1, "limit": 2, "remaining_ratio": 0.5}},
                             "key_expiry": {"acme": (1, 3600.0)}}
    names = set()
    for family in metrics.registry.collect():
        kind, name = family.type, family.name
        if kind == "counter":
            names.add(name + "_total")
        elif kind == "histogram":
            names.update(name + s for s in ("_bucket", "_sum", "_count"))
        else:
            names.add(name)
    return names


def alert_exprs() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def dashboard() -> dict:
    return json.loads((DEPLOY / "grafana" / "gateway.json").read_text())


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def test_alerts_and_dashboard_only_query_exported_metrics() -> None:
    names = exported_sample_names()
    assert {"llm_gateway_overhead_seconds_bucket", "llm_gateway_dlq_depth", "llm_gateway_budget_remaining_ratio",
            "llm_gateway_policy_info", "llm_gateway_circuit_breaker_state"} <= names
    used = {m for e in alert_exprs() + dashboard_exprs() for m in METRIC.findall(e)}
    assert used and used <= names, sorted(used - names)


def test_alerts_cover_what_an_sre_pages_on() -> None:
    text = " ".join(alert_exprs())
    for needle in ('status_class="5xx"', "llm_gateway_request_duration_seconds_bucket",
                   "llm_gateway_overhead_seconds_bucket", "llm_gateway_cost_usd_total",
                   "llm_gateway_budget_remaining_ratio", 'state="open"', "llm_gateway_dlq_depth",
                   'result="failure"', "llm_gateway_state_errors_total", 'variant="candidate"',
                   "llm_gateway_rollout_duration_seconds_bucket", "llm_gateway_rollout_rollback_tripped"):
        assert needle in text, needle


def test_dashboard_structure() -> None:
    d = dashboard()
    assert d["uid"] == "llm-gateway" and d["title"]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(p["title"] for p in d["panels"]).lower()
    for topic in ("traffic", "overhead", "time to first token", "spend", "cache hit rate", "upstream errors",
                  "budget", "dead-letter", "feedback", "rollout"):
        assert topic in titles, topic
    for p in d["panels"]:
        assert {"h", "w", "x", "y"} <= set(p["gridPos"]) and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        if p["type"] != "row":
            assert p["targets"] and all(t["expr"] and t["refId"] for t in p["targets"])
            assert p["datasource"]["uid"] == "${datasource}"
    variables = {v["name"]: v for v in d["templating"]["list"]}
    source = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    assert variables["datasource"]["current"]["value"] == source["datasources"][0]["uid"]
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/gateway.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_compose_stack() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"gateway-1", "gateway-2", "redis", "prometheus", "grafana"} <= set(services)
    for name in ("gateway-1", "gateway-2"):
        gw = services[name]
        assert gw["build"]["dockerfile"] == "deploy/Dockerfile"
        assert "./policy.yaml:/etc/gateway/policy.yaml:ro" in gw["volumes"]
        assert gw["environment"]["REDIS_URL"].startswith("redis://redis:")
    for service in ("prometheus", "grafana"):
        for volume in services[service]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), source
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = prom["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == ["gateway-1:8080", "gateway-2:8080"]
    assert prom["rule_files"] == ["alerts.yaml"]


def k8s_objects() -> dict[str, dict]:
    docs = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and "kind" in doc and doc["kind"] != "Kustomization":
                docs[doc["kind"]] = doc
    return docs


def test_kubernetes_manifests() -> None:
    objs = k8s_objects()
    assert {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= set(objs)
    dep = objs["Deployment"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert objs["Service"]["spec"]["selector"].items() <= labels.items()
    assert objs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert objs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    pod = dep["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["securityContext"]["runAsNonRoot"] is True
    mount = next(m for m in container["volumeMounts"] if m["name"] == "policy")
    assert "subPath" not in mount  # a subPath mount never sees ConfigMap updates
    volume = next(v for v in pod["volumes"] if v["name"] == "policy")
    assert volume["configMap"]["name"] == objs["ConfigMap"]["metadata"]["name"]
    assert "/etc/gateway/policy.yaml" in " ".join(container["args"])
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    assert all((DEPLOY / "k8s" / r).exists() for r in kustomization["resources"])


def test_kubernetes_grace_covers_prestop_and_the_gateway_shutdown_grace() -> None:
    """SIGTERM comes after preStop; the gateway exits within server.shutdown_grace_s; both fit the pod's grace."""
    pod = k8s_objects()["Deployment"]["spec"]["template"]["spec"]
    command = pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    grace = load_policy(str(DEPLOY / "policy.yaml"), env={}).server.shutdown_grace_s
    assert float(command[1]) + grace + 2 <= pod["terminationGracePeriodSeconds"]


def test_one_policy_everywhere_and_it_loads() -> None:
    shipped = (DEPLOY / "policy.yaml").read_text()
    configmap = k8s_objects()["ConfigMap"]["data"]["policy.yaml"]
    assert configmap == shipped
    policy = load_policy(str(DEPLOY / "policy.yaml"), env={})
    assert policy.state.backend == "redis" and "demo" in policy.tenants and not policy.warnings
    assert load_policy_text(configmap, env={"GATEWAY_STATE": "memory"}).state.backend == "memory"


def test_dockerfile() -> None:
    lines = [ln.strip() for ln in (DEPLOY / "Dockerfile").read_text().splitlines() if ln.strip()]
    froms = [ln for ln in lines if ln.startswith("FROM ")]
    assert froms and all("-slim" in ln for ln in froms)
    user = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert user and user[-1].split(":")[0] not in ("0", "root")
    assert any(ln.startswith("HEALTHCHECK ") for ln in lines) and "/healthz" in " ".join(lines)
    assert "EXPOSE 8080" in lines
    for ln in lines:
        if ln.startswith("COPY ") and "--from" not in ln:
            for src in ln.split()[1:-1]:
                assert (DEPLOY.parent / src).exists(), src


def test_configmap_style_update_is_reloaded(servers, upstream, tmp_path) -> None:
    """kubelet swaps a ``..data`` symlink to a new directory; the gateway's file poll must notice."""
    mount = tmp_path / "mount"
    first, second = mount / "..2024_01_01", mount / "..2024_01_02"
    first.mkdir(parents=True)
    second.mkdir()
    text = basic_policy(upstream.url)
    (first / "policy.yaml").write_text(text)
    (second / "policy.yaml").write_text(text + "\n# edited in the ConfigMap\n")
    os.symlink(first.name, mount / "..data")
    os.symlink("..data/policy.yaml", mount / "policy.yaml")
    live = Gateway(servers, mount / "policy.yaml", watch=True).start()
    try:
        before = live.services.holder.current.digest
        os.symlink(second.name, mount / "..data_tmp")
        os.replace(mount / "..data_tmp", mount / "..data")  # the atomic swap kubelet does
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and live.services.holder.current.digest == before:
            time.sleep(0.1)
        assert live.services.holder.current.digest != before
        assert live.services.holder.stats.success == 1
    finally:
        live.stop()
