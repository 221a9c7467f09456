"""``GET /admin/budgets`` shows managed teams and keys (their budgets' spend and their limits), paged per
tenant, never a secret; the spend is what the mock upstream's usage costs."""

from __future__ import annotations

import orjson
import pytest

from tests.support.budget import served_cost
from tests.support.keys import admin, chat, create_key, keys_policy


@pytest.fixture
def gw(make_gateway, upstream):
    return make_gateway(keys_policy(upstream.url))


def test_budgets_show_teams_and_a_page_of_keys(gw, upstream):
    team = admin(gw.url, "POST", "/admin/teams", {"tenant": "acme", "name": "ml", "rate_limit": {"rpm": 50},
                                                  "budget": {"usd": 5, "period": "daily"}})[1]
    spender = create_key(gw.url, team=team["id"], name="spender", budget={"usd": 1, "period": "daily"})
    plain = create_key(gw.url, name="plain", rate_limit={"rpm": 7})
    revoked = create_key(gw.url, name="gone")
    assert admin(gw.url, "DELETE", f"/admin/keys/{revoked['id']}")[0] == 204
    chat(gw.client(spender["key"]))
    chat(gw.client(spender["key"]))
    cost = sum(served_cost(body, "small") for body in upstream.requests)
    assert len(upstream.requests) == 2 and cost > 0

    status, data = admin(gw.url, "GET", "/admin/budgets")
    assert status == 200
    acme = data["tenants"]["acme"]
    assert acme["budget"]["usd"] == 100 and acme["budget"]["spent_usd"] == pytest.approx(cost, abs=1e-12)
    shown_team = acme["teams"][team["id"]]
    assert shown_team["name"] == "ml" and shown_team["rate_limit"] == {"rpm": 50, "tpm": None, "concurrency": None}
    assert shown_team["budget"]["usd"] == 5 and shown_team["budget"]["period"] == "daily"
    assert shown_team["budget"]["spent_usd"] == pytest.approx(cost, abs=1e-12)
    keys = acme["managed_keys"]
    assert set(keys) == {spender["id"], plain["id"]}  # the revoked key is left out
    assert keys[spender["id"]]["budget"]["spent_usd"] == pytest.approx(cost, abs=1e-12)
    assert keys[spender["id"]]["team"] == team["id"] and keys[plain["id"]]["budget"] is None
    assert keys[plain["id"]]["rate_limit"]["rpm"] == 7 and acme["managed_keys_next"] is None
    text = orjson.dumps(data).decode()
    assert all(k["key"] not in text and k["key"][10:] not in text for k in (spender, plain, revoked))

    seen, after = [], ""
    while True:
        page = admin(gw.url, "GET", f"/admin/budgets?tenant=acme&limit=1&after={after}")[1]
        assert list(page["tenants"]) == ["acme"]
        seen += list(page["tenants"]["acme"]["managed_keys"])
        after = page["tenants"]["acme"]["managed_keys_next"]
        if after is None:
            break
    assert sorted(seen) == sorted([spender["id"], plain["id"]])
    assert admin(gw.url, "GET", "/admin/budgets?limit=0")[0] == 400
    assert admin(gw.url, "GET", "/admin/budgets?tenant=nobody")[0] == 404
