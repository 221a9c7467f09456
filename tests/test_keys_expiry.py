"""Expiry warnings of managed keys: the header within the policy's window, and the per-tenant gauges
(``llm_gateway_key_expiry_seconds``, ``llm_gateway_keys_expiring``) that the shipped alerts read."""

from __future__ import annotations

import time

import pytest

from tests.support.keys import admin, create_key, keys_policy
from tests.support.prom import scrape

WINDOW_S = 3600


def _at(seconds_from_now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + seconds_from_now))


@pytest.fixture
def gw(make_gateway, upstream):
    policy = keys_policy(upstream.url).replace("admin:\n", f"admin:\n  key_expiry_warning_s: {WINDOW_S}\n")
    return make_gateway(policy)


def _headers(gw, secret: str):
    return gw.client(secret).chat.completions.with_raw_response.create(
        model="small", messages=[{"role": "user", "content": "hi"}], max_tokens=8).headers


def test_the_header_and_the_gauges_follow_the_declared_window(gw):
    soon, later = _at(WINDOW_S / 2), _at(WINDOW_S * 2)
    inside = create_key(gw.url, name="inside", expires_at=soon)
    outside = create_key(gw.url, name="outside", expires_at=later)
    create_key(gw.url, name="forever")
    create_key(gw.url, tenant="beta", name="beta-later", expires_at=later)
    assert _headers(gw, inside["key"])["x-gateway-key-expires-at"] == soon
    assert "x-gateway-key-expires-at" not in _headers(gw, outside["key"])  # 2 h away, the window is 1 h

    got = scrape(gw.url)
    assert got.value("llm_gateway_keys_expiring", tenant="acme") == 1
    assert got.value("llm_gateway_keys_expiring", tenant="beta") == 0
    assert WINDOW_S / 2 - 60 < got.value("llm_gateway_key_expiry_seconds", tenant="acme") <= WINDOW_S / 2
    assert WINDOW_S * 2 - 60 < got.value("llm_gateway_key_expiry_seconds", tenant="beta") <= WINDOW_S * 2
    assert len(got.series("llm_gateway_key_expiry_seconds")) == 2  # one per tenant, never one per key

    assert admin(gw.url, "DELETE", f"/admin/keys/{inside['id']}")[0] == 204  # a revoked key leaves the index
    got = scrape(gw.url)
    assert got.value("llm_gateway_keys_expiring", tenant="acme") == 0
    assert got.value("llm_gateway_key_expiry_seconds", tenant="acme") > WINDOW_S  # now the 2 h key

    status, moved = admin(gw.url, "PATCH", f"/admin/keys/{outside['id']}", {"expires_at": soon})
    assert status == 200 and moved["expires_at"] == soon  # an expiry moved into the window counts at once
    assert scrape(gw.url).value("llm_gateway_keys_expiring", tenant="acme") == 1


def test_without_per_tenant_metrics_the_gauges_are_one_series(upstream):
    from gateway.observability.gauges import LiveGauges
    from gateway.policy.loader import load_policy_text
    from gateway.services import build_services

    policy = load_policy_text(keys_policy(upstream.url) + "metrics: {per_tenant: false}\n", env={})
    live = LiveGauges(build_services(policy))
    live.collector.snapshot = {"key_expiry": {"acme": (2, 900.0), "beta": (1, 300.0)}}
    families = {f.name: f for f in live.collector.collect()}
    assert [(s.labels, s.value) for s in families["llm_gateway_key_expiry_seconds"].samples] == [({"tenant": ""}, 300.0)]
    assert [(s.labels, s.value) for s in families["llm_gateway_keys_expiring"].samples] == [({"tenant": ""}, 3.0)]
