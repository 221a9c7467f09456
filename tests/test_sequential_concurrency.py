"""A client that waits for each answer before its next request never meets its own finished request's
concurrency slot: the answer comes before ``complete`` releases the slot, so the release must still reach
the state backend before that client's next admission (it does: it is sent first, on the same pipeline)."""

from __future__ import annotations

import pytest

from tests.support.ratelimit import KEY, MSG, limited_policy, redis_state


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_back_to_back_requests_under_concurrency_one_are_never_refused(make_gateway, upstream, request, backend):
    state = "backend: memory" if backend == "memory" else redis_state(request.getfixturevalue("redis_server").url,
                                                                       timeout_ms=2000)
    gw = make_gateway(limited_policy(upstream.url, "{concurrency: 1}", state=state))
    client = gw.client(KEY)
    for _ in range(60):  # one after the other, plain answers and streams
        client.chat.completions.create(model="small", messages=MSG)
        with client.chat.completions.create(model="small", messages=MSG, stream=True) as stream:
            for _ in stream:
                pass
    gw.idle()
    assert gw.services.ratelimit_stats.outcomes.get("over_limit", 0) == 0
