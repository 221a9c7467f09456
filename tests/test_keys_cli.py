"""``gateway keys``: the CLI round trip against a running gateway, the key then used with the openai SDK."""

from __future__ import annotations

import openai
import orjson
import pytest

from gateway.cli import main
from tests.support.keys import ADMIN_KEY, chat, keys_policy


def test_create_list_show_rotate_revoke(make_gateway, upstream, capsys):
    gw = make_gateway(keys_policy(upstream.url))
    base = ["--url", gw.url, "--admin-key", ADMIN_KEY]
    assert main(["keys", "create", *base, "--tenant", "acme", "--name", "cli", "--models", "small", "--rpm", "5",
                 "--metadata", "owner=ops"]) == 0
    out = capsys.readouterr().out
    secret = next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("key: "))
    key_id = next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("id: "))
    chat(gw.client(secret))
    assert main(["keys", "list", *base, "--tenant", "acme"]) == 0
    listed = capsys.readouterr().out
    assert key_id in listed and secret not in listed and secret[:10] in listed
    assert main(["keys", "show", *base, key_id, "--json"]) == 0
    assert secret not in capsys.readouterr().out
    assert main(["keys", "rotate", *base, key_id]) == 0
    new = next(line.split(": ", 1)[1] for line in capsys.readouterr().out.splitlines() if line.startswith("key: "))
    chat(gw.client(new))
    assert main(["keys", "revoke", *base, key_id]) == 0
    with pytest.raises(openai.AuthenticationError):
        chat(gw.client(new))
    assert main(["keys", "create", *base, "--tenant", "acme", "--name", "wide", "--rpm", "1000"]) == 1
    assert "rate_limit.rpm" in capsys.readouterr().err
    assert main(["keys", "list", "--url", gw.url, "--admin-key", "sk-acme", "--tenant", "acme"]) == 1


def test_teams_round_trip(make_gateway, upstream, capsys):
    gw = make_gateway(keys_policy(upstream.url))
    base = ["--url", gw.url, "--admin-key", ADMIN_KEY]
    assert main(["teams", "create", *base, "--tenant", "acme", "--name", "web", "--models", "small", "--rpm", "5",
                 "--json"]) == 0
    team = orjson.loads(capsys.readouterr().out)
    assert team["models"] == ["small"] and team["rate_limit"]["rpm"] == 5
    assert main(["teams", "list", *base, "--tenant", "acme"]) == 0
    assert team["id"] in capsys.readouterr().out
    assert main(["keys", "create", *base, "--tenant", "acme", "--team", team["id"], "--name", "k",
                 "--models", "large"]) == 1
    assert "models" in capsys.readouterr().err
    assert main(["teams", "delete", *base, team["id"]]) == 0
    assert main(["teams", "show", *base, team["id"]]) == 1
