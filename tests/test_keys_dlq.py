"""A dead-letter replay runs as the key that sent the request (managed or policy-file, with its limits and
budget), or as the identity declared with ``--as``; a key revoked since is refused and its entry stays."""

from __future__ import annotations

import json

import openai
import pytest

from gateway.cli import main as cli
from tests.support.failover_policy import ADMIN_KEY, failover_policy
from tests.support.keys import admin
from tests.support.mock_openai import Fault


@pytest.fixture
def gw(make_gateway, upstream, backup, tmp_path):
    policy = failover_policy(upstream.url, backup.url, dlq_path=str(tmp_path / "dlq.jsonl"))
    policy = policy.replace("    context_window: 8000\n", "    context_window: 8000\n    price: {input: 100, output: 200}\n")
    policy = policy.replace("api_keys: [sk-acme]", "api_keys: [sk-acme, {key: sk-acme-ops, name: ops}]")
    return make_gateway(policy)


def _send(gw, secret: str, text: str) -> None:
    with pytest.raises(openai.InternalServerError):
        gw.client(secret).chat.completions.create(model="chat", messages=[{"role": "user", "content": text}])


def _entries(gw, capsys) -> dict[str, str]:
    """The queue as {message text: entry id}."""
    capsys.readouterr()
    assert cli(["dlq", "list", "--json", "--policy", str(gw.path)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"id"')]
    return {r["body"]["messages"][0]["content"]: r["id"] for r in rows}


def _replay(gw, *args: str) -> int:
    return cli(["dlq", "replay", "--policy", str(gw.path), "--url", gw.url, "--admin-key", ADMIN_KEY, *args])


def _spent(gw, key_id: str) -> float:
    return admin(gw.url, "GET", f"/admin/keys/{key_id}", key=ADMIN_KEY)[1]["spend_usd"]


def _requests(gw, name: str) -> int:
    keys = admin(gw.url, "GET", "/admin/spend?tenant=acme", key=ADMIN_KEY)[1]["tenants"]["acme"]["keys"]
    return keys.get(name, {}).get("requests", 0)


def test_replays_run_as_their_own_key_and_a_revoked_key_is_refused(gw, upstream, backup, capsys):
    kept, gone = (admin(gw.url, "POST", "/admin/keys", {"tenant": "acme", "name": n}, key=ADMIN_KEY)[1]
                  for n in ("kept", "gone"))
    upstream.default = backup.default = Fault(500)
    _send(gw, kept["key"], "from kept")
    _send(gw, gone["key"], "from gone")
    _send(gw, "sk-acme-ops", "from ops")
    entries = _entries(gw, capsys)
    assert len(entries) == 3
    assert admin(gw.url, "DELETE", f"/admin/keys/{gone['id']}", key=ADMIN_KEY)[0] == 204
    upstream.default = Fault()
    before = _spent(gw, kept["id"]), _requests(gw, "ops"), _requests(gw, "acme#0")

    capsys.readouterr()
    assert _replay(gw, "--all") == 1  # one refused
    out = capsys.readouterr().out
    assert f"failed   {entries['from gone']}: HTTP 409 replay_key_revoked: Key '{gone['id']}' was revoked" in out
    assert "stays in the dead-letter queue" in out and "replayed 2, failed 1; depth now 1" in out
    assert list(_entries(gw, capsys)) == ["from gone"]
    assert _spent(gw, kept["id"]) > before[0]  # charged to the managed key that sent it
    assert _requests(gw, "ops") == before[1] + 1  # and to the policy key that sent the other
    assert _requests(gw, "acme#0") == before[2] == 0  # never to the tenant's first key (sk-acme)

    assert _replay(gw, "--all", "--as", "nobody") == 1  # an identity the tenant does not have: refused too
    assert "replay_key_unknown" in capsys.readouterr().out
    spent = _spent(gw, kept["id"])
    assert _replay(gw, "--all", "--as", kept["id"]) == 0  # declared: runs as that key, with its budget
    assert "replayed 1, failed 0; depth now 0" in capsys.readouterr().out
    assert _spent(gw, kept["id"]) > spent
