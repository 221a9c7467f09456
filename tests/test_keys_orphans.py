"""Keys and teams of a tenant removed from the policy: refused at once with 401 ``key_orphaned``, listed
by ``GET /admin/orphans`` and ``gateway keys orphans``, deleted by ``gateway keys prune``; a tenant put
back before the prune gets its keys back."""

from __future__ import annotations

import openai
import pytest

from gateway.cli import main
from tests.support.keys import ADMIN_KEY, admin, chat, create_key, keys_policy


def test_a_removed_tenants_keys_are_refused_listed_and_pruned(make_gateway, upstream, capsys):
    full = keys_policy(upstream.url)
    without_beta = full[: full.index("  beta:\n")]
    gw = make_gateway(full)
    cli = ["--url", gw.url, "--admin-key", ADMIN_KEY]
    team = admin(gw.url, "POST", "/admin/teams", {"tenant": "beta", "name": "bt"})[1]
    beta = create_key(gw.url, tenant="beta", team=team["id"], name="b1")
    beta_admin = create_key(gw.url, tenant="beta", name="badmin", role="tenant_admin")
    acme = create_key(gw.url, name="a1")
    chat(gw.client(beta["key"]))

    gw.path.write_text(without_beta)
    assert gw.reload()
    with pytest.raises(openai.AuthenticationError) as refused:
        chat(gw.client(beta["key"]))  # at once: the cached answer belonged to the previous policy
    assert refused.value.code == "key_orphaned"
    assert admin(gw.url, "GET", "/admin/keys?tenant=beta", key=beta_admin["key"])[0] == 403  # no admin either
    chat(gw.client(acme["key"]))
    assert admin(gw.url, "GET", "/admin/orphans", key=beta_admin["key"])[0] == 403
    assert admin(gw.url, "GET", "/admin/orphans") == (200, {"data": [{"tenant": "beta", "keys": 2, "teams": 1}]})

    gw.path.write_text(full)  # put back before a prune: the keys work again
    assert gw.reload()
    chat(gw.client(beta["key"]))
    assert admin(gw.url, "GET", "/admin/orphans") == (200, {"data": []})

    gw.path.write_text(without_beta)
    assert gw.reload()
    assert main(["keys", "orphans", *cli]) == 0
    assert "orphaned: tenant beta: 2 keys, 1 teams" in capsys.readouterr().out
    assert main(["keys", "prune", *cli, "--dry-run"]) == 0
    assert "orphaned: tenant beta: 2 keys, 1 teams" in capsys.readouterr().out
    assert admin(gw.url, "GET", f"/admin/keys/{beta['id']}")[0] == 200  # a dry run deletes nothing
    assert main(["keys", "prune", *cli]) == 0
    assert "pruned: tenant beta: 2 keys, 1 teams" in capsys.readouterr().out
    assert main(["keys", "orphans", *cli]) == 0
    assert "no orphaned keys or teams" in capsys.readouterr().out
    assert admin(gw.url, "GET", f"/admin/keys/{beta['id']}")[0] == 404
    assert admin(gw.url, "GET", f"/admin/teams/{team['id']}")[0] == 404

    gw.path.write_text(full)  # put back after the prune: those keys are gone for good
    assert gw.reload()
    with pytest.raises(openai.AuthenticationError) as gone:
        chat(gw.client(beta["key"]))
    assert gone.value.code == "invalid_api_key"
    assert admin(gw.url, "GET", "/admin/keys?tenant=beta")[1]["data"] == []
    chat(gw.client(acme["key"]))
