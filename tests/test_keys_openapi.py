"""docs/openapi-admin.yaml: parses, is OpenAPI 3.1, and documents every managed-key route the gateway serves."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from gateway.keys.model import key_view
from gateway.keys.store import new_id

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = {
    ("post", "/admin/teams"), ("get", "/admin/teams"), ("get", "/admin/teams/{id}"), ("patch", "/admin/teams/{id}"),
    ("delete", "/admin/teams/{id}"), ("post", "/admin/keys"), ("get", "/admin/keys"), ("get", "/admin/keys/{id}"),
    ("patch", "/admin/keys/{id}"), ("post", "/admin/keys/{id}/rotate"), ("delete", "/admin/keys/{id}"),
    ("get", "/admin/orphans"), ("delete", "/admin/orphans"),
}


def _doc() -> dict:
    return yaml.safe_load((ROOT / "docs/openapi-admin.yaml").read_text())


def _refs(node: object) -> set[str]:
    if isinstance(node, dict):
        return {v for k, v in node.items() if k == "$ref"} | {r for v in node.values() for r in _refs(v)}
    if isinstance(node, list):
        return {r for v in node for r in _refs(v)}
    return set()


def test_every_contract_route_is_documented_and_every_reference_resolves():
    doc = _doc()
    assert doc["openapi"].startswith("3.1")
    methods = {"get", "post", "patch", "delete", "put"}
    documented = {(m, path) for path, item in doc["paths"].items() for m in item if m in methods}
    assert documented == CONTRACT
    for ref in _refs(doc):
        node = doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]


def test_the_routes_the_app_serves_are_the_documented_ones(make_gateway, upstream):
    from tests.support.keys import keys_policy

    gw = make_gateway(keys_policy(upstream.url))
    served = {(r.method.lower(), r.resource.canonical) for r in gw.app.router.routes()
              if r.resource is not None and re.match(r"/admin/(keys|teams|orphans)", r.resource.canonical)
              and r.method != "HEAD"}
    assert served == CONTRACT


def test_the_key_object_has_the_documented_required_fields():
    from gateway.keys.model import KeyRecord

    schema = _doc()["components"]["schemas"]["Key"]["allOf"][1]
    view = key_view(KeyRecord(new_id("key"), "acme", "dev", "0" * 64, "sk-gw-abcd"))
    assert set(schema["required"]) <= set(view) <= set(schema["properties"]) | {"models", "rate_limit", "budget"}
    assert "digest" not in view and "key" not in view
