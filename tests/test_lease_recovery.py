"""Concurrency leases recover with Redis: releases it did not confirm are replayed when it answers.

A black-holed Redis (SIGSTOP) lets a slot acquire time out on the client and apply when Redis
resumes; the request ran on the local fallback and its release could not reach Redis. Before, those
slots held the tenant's capacity until their 30 s lease ran out; now the kept releases are replayed
(idempotently) as soon as Redis answers, and the tenant is admitted again at once.
"""

from __future__ import annotations

import threading
import time

import openai
import redis

from tests.support.mock_openai import Fault
from tests.support.ratelimit import KEY, MSG, limited_policy, redis_state


def ask(client: openai.OpenAI, out: list[int]) -> None:
    try:
        client.chat.completions.create(model="small", messages=MSG)
        out.append(200)
    except openai.RateLimitError:
        out.append(429)


def pair(client: openai.OpenAI) -> list[int]:
    out: list[int] = []
    threads = [threading.Thread(target=ask, args=(client, out)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    return sorted(out)


def test_slots_come_back_as_soon_as_redis_does(make_gateway, upstream, redis_server):
    gw = make_gateway(limited_policy(upstream.url, "{concurrency: 2}", state=redis_state(redis_server.url)))
    client = gw.client(KEY)
    assert pair(client) == [200, 200]  # scripts loaded, both slots free again
    r = redis.Redis.from_url(redis_server.url)

    def slots() -> int:
        return sum(r.zcard(k) for k in r.keys("*") if b"conc" in k)

    stats = gw.services.ratelimit_stats
    redis_server.pause()
    upstream.push(Fault(delay_s=0.5), Fault(delay_s=0.5))
    during = pair(client)  # acquires time out (applied later), the local fallback serves
    gw.idle(10)  # their releases (in complete, after the answers) time out too, and are kept
    redis_server.resume()
    resumed = time.monotonic()
    stale = slots()  # the slots the timed-out acquires took once Redis ran again
    time.sleep(1.2)  # the limiter leaves a failed backend alone for 1 s
    after = pair(client)
    waited = time.monotonic() - resumed
    gw.idle(10)
    print(f"\nduring the stall {during}; slots in Redis on resume {stale}; after {waited:.1f} s {after}; "
          f"releases kept {stats.releases_kept}, replayed {stats.releases_replayed}; slots now {slots()}")
    assert during == [200, 200] and stats.releases_kept >= 2
    assert after == [200, 200]  # was: [429, 429] until the leases expired (~30 s)
    assert stats.releases_replayed >= 2 and slots() == 0
