"""``docs/openapi.yaml`` against the live gateway: a bounded schemathesis run answers no 5xx.

The gateway runs in-process on the bundled quick-start policy (the ``mock`` provider, memory state)
plus an admin key; schemathesis generates valid and invalid requests for every operation in the
document (admin routes with the admin key, the rest with the demo tenant's; a string ``model`` is
replaced by one the tenant may use, so bodies reach the upstream call). Also checks that the
document names every route the gateway serves, and nothing it doesn't.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from hypothesis import HealthCheck, settings

from gateway.policy.bundled import DEMO_KEY, bundled_policy
from tests.support.harness import Gateway, ServerThread

schemathesis = pytest.importorskip("schemathesis")

DOC = Path(__file__).resolve().parents[1] / "docs" / "openapi.yaml"
TENANT_KEY, ADMIN_KEY = DEMO_KEY, "sk-admin-openapi"
MAX_EXAMPLES = 12  # per operation and mode: ~18 operations, the run stays well under a minute
STATUSES: Counter[str] = Counter()

schema = schemathesis.openapi.from_path(DOC)
schema.config.generation.update(modes=list(schemathesis.GenerationMode), max_examples=MAX_EXAMPLES)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("openapi")
    policy = folder / "policy.yaml"
    policy.write_text(bundled_policy().read_text() + f"\nadmin: {{api_keys: [{ADMIN_KEY}]}}\n"
                      'logging: {access_log: "off"}\n')
    thread = ServerThread()
    gw = Gateway(thread, policy, env={}).start()
    yield gw
    gw.stop()
    thread.close()


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_generated_request_gets_a_5xx(case, live: Gateway) -> None:
    key = ADMIN_KEY if case.path.startswith("/admin") else TENANT_KEY
    case.headers = {**(case.headers or {}), "authorization": f"Bearer {key}"}
    if isinstance(case.body, dict) and isinstance(case.body.get("model"), str):
        # a model the tenant has, so generated bodies get past routing to the upstream call
        case.body["model"] = "embed" if case.path == "/v1/embeddings" else "demo"
    response = case.call(base_url=live.url, timeout=15)
    STATUSES[f"{case.method} {case.path} {response.status_code}"] += 1
    assert response.status_code < 500, f"{response.status_code} {response.text[:300]}\n{case.as_curl_command()}"


def test_the_document_lists_every_route_the_gateway_serves(live: Gateway) -> None:
    served = {(r.method, r.resource.canonical) for r in live.app.router.routes()
              if r.method not in ("HEAD", "*") and r.resource is not None}
    paths = yaml.safe_load(DOC.read_text())["paths"]
    paths.update(yaml.safe_load((DOC.parent / "openapi-admin.yaml").read_text())["paths"])  # keys, teams
    documented = {(m.upper(), path) for path, ops in paths.items() for m in ops if m != "parameters"}
    assert documented == served, (sorted(documented - served), sorted(served - documented))


def test_a_dropped_field_named_with_a_control_character_is_answered(live: Gateway) -> None:
    """Found by schemathesis: an unknown Messages field named "\\x1f" went raw into ``x-gateway-dropped``,
    aiohttp refused to write the header and the client got no answer at all."""
    body = {"\x1f": None, "a,b": 1, "é": 2, "model": "demo", "max_tokens": 8,
            "messages": [{"role": "user", "content": "hi"}]}
    resp = httpx.post(live.url + "/v1/messages", json=body, headers={"x-api-key": TENANT_KEY}, timeout=10)
    print(f"\nunknown fields \\x1f, 'a,b', 'é': {resp.status_code}, x-gateway-dropped: "
          f"{resp.headers.get('x-gateway-dropped')}")
    assert resp.status_code == 200 and resp.json()["type"] == "message"
    assert sorted(resp.headers["x-gateway-dropped"].split(",")) == ["%1F", "%C3%A9", "a%2Cb"]


def test_zz_print_figures() -> None:
    """Prints the answers schemathesis got, by operation and status (runs last in the file)."""
    by_status = Counter(k.rsplit(" ", 1)[1] for k in STATUSES.elements())
    print(f"\nschemathesis: {sum(STATUSES.values())} requests, statuses {dict(sorted(by_status.items()))}")
