"""Provider connection pools across reloads: a changed provider's old pool is closed after its grace.

Each reload below changes the provider's spec (its headers), so ``LiveProviders`` builds a new instance
and retires the old one; with ``timeouts.total_s: 0.2`` the grace is 1.2 s. However many reloads
happen, the retired pools close and the upstream ends up with the one connection of the live pool.
"""

from __future__ import annotations

import textwrap

from tests.support.harness import ServerThread, eventually
from tests.support.mock_openai import MockOpenAI

MSG = [{"role": "user", "content": "hi"}]
RELOADS = 4


def pool_policy(upstream: str, rev: int) -> str:
    return textwrap.dedent(f"""\
        version: 1
        state:
          backend: memory
        providers:
          upstream:
            type: openai
            base_url: {upstream}
            api_key: sk-upstream-secret
            timeouts: {{total_s: 0.2}}
            headers: {{x-rev: "{rev}"}}
        models:
          small:
            price: {{input: 1.0, output: 2.0}}
            deployments:
              - {{provider: upstream, model: small-a}}
        tenants:
          acme:
            api_keys: [sk-acme]
            models: "*"
        """)


def server_connections(servers: ServerThread, mock: MockOpenAI) -> int:
    """Connections the mock upstream holds open, counted in its own loop."""

    async def count() -> int:
        assert mock._runner is not None and mock._runner.server is not None
        return len(mock._runner.server.connections)

    return servers.call(count())


def test_reloads_retire_old_pools_and_the_pool_count_stays_flat(make_gateway, upstream, servers) -> None:
    gw = make_gateway(pool_policy(upstream.url, 0))
    providers = gw.services.providers
    client = gw.client("sk-acme")
    assert client.chat.completions.create(model="small", messages=MSG).choices
    old = []
    for rev in range(1, RELOADS + 1):
        previous = providers.get("upstream")
        assert previous._session is not None  # its pool is open: the request before used it
        old.append((previous, previous._session))
        gw.path.write_text(pool_policy(upstream.url, rev))
        assert gw.reload()
        assert providers.get("upstream") is not previous
        assert providers.retired >= 1  # the grace has only just started
        assert client.chat.completions.create(model="small", messages=MSG).choices
        assert upstream.headers[-1]["x-rev"] == str(rev)  # the request went through the new spec

    assert len({id(p) for p, _ in old}) == RELOADS
    assert eventually(lambda: providers.retired == 0, 10), f"{providers.retired} retired pools still open"
    assert eventually(lambda: all(session.closed for _, session in old), 5)
    assert all(provider._session is None for provider, _ in old)

    live = providers.get("upstream")
    assert live._session is not None and not live._session.closed
    assert eventually(lambda: server_connections(servers, upstream) == 1, 5), server_connections(servers, upstream)
    assert client.chat.completions.create(model="small", messages=MSG).choices  # the live pool still serves


def test_an_unchanged_spec_keeps_its_pool_across_reloads(make_gateway, upstream) -> None:
    gw = make_gateway(pool_policy(upstream.url, 0))
    providers = gw.services.providers
    assert gw.client("sk-acme").chat.completions.create(model="small", messages=MSG).choices
    before = providers.get("upstream")
    gw.path.write_text(pool_policy(upstream.url, 0) + "\n# a comment changes the file, not the provider\n")
    assert gw.reload()
    assert providers.get("upstream") is before
    assert providers.retired == 0
    assert before._session is not None and not before._session.closed
