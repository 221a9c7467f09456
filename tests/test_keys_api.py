"""Managed keys and teams through the admin API of a real gateway, used with the openai and anthropic SDKs."""

from __future__ import annotations

import time

import anthropic
import openai
import pytest

from tests.support.keys import admin, chat, create_key, keys_policy


@pytest.fixture
def gw(make_gateway, upstream, tmp_path):
    return make_gateway(keys_policy(upstream.url, access_log=str(tmp_path / "access.jsonl")))


def test_a_created_key_works_on_every_surface_and_get_never_shows_the_secret(gw, upstream):
    made = create_key(gw.url, name="dev", models=["small"], metadata={"owner": "ana"})
    secret = made["key"]
    assert secret.startswith("sk-gw-") and made["prefix"] == secret[:10]
    assert made["tenant"] == "acme" and made["models"] == ["small"] and made["revoked_at"] is None
    reply = chat(gw.client(secret))
    assert reply.choices[0].message.content
    with pytest.raises(openai.APIStatusError) as refused:  # narrowed: the tenant has large, this key not
        chat(gw.client(secret), model="large")
    assert refused.value.status_code in (403, 404)
    assert [m.id for m in gw.client(secret).models.list()] == ["small"]
    claude = anthropic.Anthropic(base_url=gw.url, api_key=secret, max_retries=0, timeout=15.0)
    msg = claude.messages.create(model="small", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].text
    assert claude.messages.count_tokens(model="small", messages=[{"role": "user", "content": "hi"}]).input_tokens
    status, got = admin(gw.url, "GET", f"/admin/keys/{made['id']}")
    assert status == 200 and "key" not in got and got["metadata"] == {"owner": "ana"}
    assert got["spend_usd"] > 0  # two calls charged to this key
    assert secret not in str(got) and secret[10:] not in str(admin(gw.url, "GET", "/admin/keys?tenant=acme")[1])


def test_a_key_rpm_tighter_than_the_tenant_binds_and_the_tenant_key_is_unaffected(gw):
    secret = create_key(gw.url, rate_limit={"rpm": 2})["key"]
    client = gw.client(secret)
    chat(client)
    chat(client)
    with pytest.raises(openai.RateLimitError):
        chat(client)
    chat(gw.client("sk-acme"))  # the tenant's rpm is 100


def test_a_key_budget_and_a_team_budget_bind(gw):
    tiny = create_key(gw.url, budget={"usd": 0.00001, "period": "monthly"})["key"]
    with pytest.raises(openai.RateLimitError) as refused:
        chat(gw.client(tiny), model="large")
    assert refused.value.code == "insufficient_quota"
    status, team = admin(gw.url, "POST", "/admin/teams", {"tenant": "acme", "name": "ml",
                                                          "budget": {"usd": 0.00001, "period": "daily"}})
    assert status == 201
    in_team = create_key(gw.url, team=team["id"])["key"]
    with pytest.raises(openai.RateLimitError) as refused:
        chat(gw.client(in_team), model="large")
    assert f"team '{team['id']}'" in refused.value.message
    chat(gw.client("sk-acme"), model="large")


def test_a_team_change_may_not_leave_a_key_wider_than_the_team(gw):
    team = admin(gw.url, "POST", "/admin/teams", {"tenant": "acme", "name": "ops",
                                                  "budget": {"usd": 10, "period": "monthly"}})[1]
    status, data = admin(gw.url, "POST", "/admin/keys", {"tenant": "acme", "team": team["id"], "name": "w",
                                                         "budget": {"usd": 1, "period": "weekly"}})
    assert (status, data["error"]["param"]) == (400, "budget.period")
    key = create_key(gw.url, team=team["id"], budget={"usd": 2, "period": "monthly"})
    for change, field in (({"budget": {"usd": 10, "period": "daily"}}, "budget.period"),
                          ({"budget": {"usd": 1, "period": "monthly"}}, "budget.usd")):
        status, data = admin(gw.url, "PATCH", f"/admin/teams/{team['id']}", change)
        assert (status, data["error"]["param"]) == (400, field) and key["id"] in data["error"]["message"]
    assert admin(gw.url, "PATCH", f"/admin/teams/{team['id']}", {"budget": {"usd": 5, "period": "monthly"}})[0] == 200


@pytest.mark.parametrize(("body", "field"), [
    ({"models": ["gpt-9"]}, "models"),
    ({"rate_limit": {"rpm": 1000}}, "rate_limit.rpm"),
    ({"rate_limit": {"concurrency": 21}}, "rate_limit.concurrency"),
    ({"budget": {"usd": 101, "period": "monthly"}}, "budget.usd"),
    ({"budget": {"usd": 1, "period": "total"}}, "budget.period"),  # longer than the tenant's month
    ({"budget": {"usd": 1, "period": "weekly"}}, "budget.period"),  # an ISO week crosses month ends
    ({"expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
    ({"tenant": "nobody"}, "tenant"),
    ({"colour": "red"}, "colour"),
])
def test_widening_a_parent_is_a_400_naming_the_field(gw, body, field):
    status, data = admin(gw.url, "POST", "/admin/keys", {"tenant": "acme", "name": "x", **body})
    assert status == 400, data
    assert data["error"]["param"] == field


def test_a_team_narrows_its_keys(gw):
    status, team = admin(gw.url, "POST", "/admin/teams", {"tenant": "acme", "name": "web", "models": ["small"],
                                                          "rate_limit": {"rpm": 5}})
    assert status == 201 and team["models"] == ["small"]
    for body, field in (({"models": ["large"]}, "models"), ({"rate_limit": {"rpm": 6}}, "rate_limit.rpm")):
        status, data = admin(gw.url, "POST", "/admin/keys", {"tenant": "acme", "team": team["id"], "name": "k",
                                                             **body})
        assert (status, data["error"]["param"]) == (400, field)
    status, data = admin(gw.url, "POST", "/admin/teams", {"tenant": "beta", "name": "t", "models": ["large"]})
    assert (status, data["error"]["param"]) == (400, "models")
    secret = create_key(gw.url, team=team["id"])["key"]
    with pytest.raises(openai.APIStatusError):
        chat(gw.client(secret), model="large")
    for _ in range(5):  # the team's rpm 5 binds the key, whose own rpm is the tenant's
        chat(gw.client(secret))
    with pytest.raises(openai.RateLimitError) as refused:
        chat(gw.client(secret))
    assert f"team '{team['id']}'" in refused.value.message


def test_teams_crud(gw):
    status, team = admin(gw.url, "POST", "/admin/teams", {"tenant": "acme", "name": "ops"})
    assert status == 201
    tid = team["id"]
    assert admin(gw.url, "GET", f"/admin/teams/{tid}") == (200, team)
    status, patched = admin(gw.url, "PATCH", f"/admin/teams/{tid}", {"rate_limit": {"rpm": 9}, "name": "ops2"})
    assert status == 200 and patched["rate_limit"]["rpm"] == 9 and patched["name"] == "ops2"
    assert admin(gw.url, "PATCH", f"/admin/teams/{tid}", {"rate_limit": {"rpm": 101}})[1]["error"]["param"] \
        == "rate_limit.rpm"
    assert [t["id"] for t in admin(gw.url, "GET", "/admin/teams?tenant=acme")[1]["data"]] == [tid]
    key = create_key(gw.url, team=tid)
    assert admin(gw.url, "DELETE", f"/admin/teams/{tid}")[0] == 409
    assert admin(gw.url, "DELETE", f"/admin/keys/{key['id']}")[0] == 204
    assert admin(gw.url, "DELETE", f"/admin/teams/{tid}")[0] == 204
    assert admin(gw.url, "GET", f"/admin/teams/{tid}")[0] == 404


def test_patch_changes_limits_at_once(gw):
    made = create_key(gw.url)
    status, got = admin(gw.url, "PATCH", f"/admin/keys/{made['id']}", {"rate_limit": {"rpm": 1}, "name": "renamed"})
    assert status == 200 and got["rate_limit"]["rpm"] == 1 and got["name"] == "renamed" and "key" not in got
    chat(gw.client(made["key"]))
    with pytest.raises(openai.RateLimitError):
        chat(gw.client(made["key"]))


def test_rotate_keeps_the_old_secret_for_its_grace_then_only_the_new(gw):
    made = create_key(gw.url)
    old = made["key"]
    chat(gw.client(old))
    status, rotated = admin(gw.url, "POST", f"/admin/keys/{made['id']}/rotate", {"grace_s": 1.5})
    assert status == 200 and rotated["id"] == made["id"]
    new = rotated["key"]
    assert new != old and rotated["prefix"] == new[:10]
    chat(gw.client(old))
    chat(gw.client(new))
    time.sleep(2.2)
    with pytest.raises(openai.AuthenticationError):
        chat(gw.client(old))
    chat(gw.client(new))
    status, again = admin(gw.url, "POST", f"/admin/keys/{made['id']}/rotate", {})  # no grace: at once
    with pytest.raises(openai.AuthenticationError):
        chat(gw.client(new))
    chat(gw.client(again["key"]))


def test_revoke_and_expiry(gw):
    made = create_key(gw.url)
    chat(gw.client(made["key"]))
    assert admin(gw.url, "DELETE", f"/admin/keys/{made['id']}") == (204, None)
    with pytest.raises(openai.AuthenticationError):
        chat(gw.client(made["key"]))
    assert admin(gw.url, "GET", f"/admin/keys/{made['id']}")[1]["revoked_at"] is not None
    soon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 2.5))
    expiring = create_key(gw.url, expires_at=soon)
    assert expiring["expires_at"] == soon
    def headers(secret: str):
        return gw.client(secret).chat.completions.with_raw_response.create(
            model="small", messages=[{"role": "user", "content": "hi"}], max_tokens=8).headers

    assert headers(expiring["key"])["x-gateway-key-expires-at"] == soon  # within the 7-day warning window
    assert "x-gateway-key-expires-at" not in headers(create_key(gw.url)["key"])
    time.sleep(3.2)
    with pytest.raises(openai.AuthenticationError):
        chat(gw.client(expiring["key"]))


def test_paging_walks_every_key_once(gw):
    made = {create_key(gw.url, name=f"k{i}")["id"] for i in range(5)}
    seen: list[str] = []
    after = ""
    for _ in range(5):
        status, page = admin(gw.url, "GET", f"/admin/keys?tenant=acme&limit=2&after={after}")
        assert status == 200 and len(page["data"]) <= 2
        seen += [k["id"] for k in page["data"]]
        if not page["has_more"]:
            assert page["next"] is None
            break
        after = page["next"]
    assert sorted(seen) == sorted(made) and len(seen) == 5
    assert admin(gw.url, "GET", "/admin/keys?tenant=acme&limit=0")[1]["error"]["param"] == "limit"
    assert admin(gw.url, "GET", "/admin/keys")[1]["error"]["param"] == "tenant"


def test_a_tenant_admin_key_sees_only_its_tenant(gw):
    boss = create_key(gw.url, name="boss", role="tenant_admin")["key"]
    other = create_key(gw.url, tenant="beta", name="b")
    status, mine = admin(gw.url, "POST", "/admin/keys", {"name": "mine"}, key=boss)
    assert status == 201 and mine["tenant"] == "acme"
    assert admin(gw.url, "POST", "/admin/keys", {"tenant": "beta", "name": "x"}, key=boss)[0] == 403
    assert admin(gw.url, "GET", f"/admin/keys/{other['id']}", key=boss)[0] == 404
    assert admin(gw.url, "DELETE", f"/admin/keys/{other['id']}", key=boss)[0] == 404
    assert admin(gw.url, "GET", "/admin/keys?tenant=beta", key=boss)[0] == 403
    assert admin(gw.url, "POST", "/admin/keys", {"name": "x", "role": "tenant_admin"}, key=boss)[0] == 403
    ids = [k["id"] for k in admin(gw.url, "GET", "/admin/keys", key=boss)[1]["data"]]
    assert mine["id"] in ids and other["id"] not in ids
    assert admin(gw.url, "GET", "/admin/keys?tenant=acme", key=mine["key"])[0] == 403  # a plain managed key
    assert admin(gw.url, "GET", "/admin/keys?tenant=acme", key="sk-acme")[0] == 403
    assert admin(gw.url, "GET", "/admin/keys?tenant=acme", key="")[0] == 401
    assert admin(gw.url, "GET", "/admin/budgets", key=boss)[0] == 403  # the rest of /admin stays admin-only
    chat(gw.client(mine["key"]))


def test_secrets_never_reach_the_access_log_or_the_audit_records(gw, tmp_path):
    made = create_key(gw.url)
    chat(gw.client(made["key"]))
    rotated = admin(gw.url, "POST", f"/admin/keys/{made['id']}/rotate", {"grace_s": 5})[1]
    chat(gw.client(rotated["key"]))
    with pytest.raises(openai.AuthenticationError):
        chat(gw.client("sk-gw-not-a-real-key"))
    log = tmp_path / "access.jsonl"
    deadline = time.monotonic() + 5
    while (not log.exists() or log.read_text().count("\n") < 3) and time.monotonic() < deadline:
        time.sleep(0.05)
    text = log.read_text()
    assert made["id"] in text  # the log names the key by id
    for secret in (made["key"], rotated["key"]):
        assert secret not in text and secret[10:] not in text
    assert "sk-gw-not-a-real-key" not in text
    boss = create_key(gw.url, name="boss", role="tenant_admin")["key"]
    assert admin(gw.url, "PATCH", f"/admin/keys/{made['id']}", {"rate_limit": {"rpm": 7}}, key=boss)[0] == 200
    assert admin(gw.url, "DELETE", f"/admin/keys/{made['id']}")[0] == 204
    services = gw.services
    records = [r for _, r in gw.thread.call(services.backend.log_range(services.keys.store.audit_key, 100))]
    mine = [r for r in records if r["id"] == made["id"]]
    assert [r["action"] for r in mine] == ["key.create", "key.rotate", "key.update", "key.revoke"]
    assert mine[0]["who"] == "admin" and mine[2]["who"].startswith("key_") and mine[2]["who"] != made["id"]
    assert mine[2]["before"]["rate_limit"] is None and mine[2]["after"]["rate_limit"]["rpm"] == 7
    for secret in (made["key"], rotated["key"], boss):
        assert secret[10:] not in str(records)
