"""Single-flight: identical requests in flight at once make one upstream call (openai SDK, real mock)."""

from __future__ import annotations

import asyncio

import openai
import pytest

from gateway.stages.cache import CacheStage
from tests.support.cache import MSG, cache_gateway, state_for
from tests.support.mock_openai import Fault

N = 50


@pytest.fixture(params=["memory", "redis"])
def state(request: pytest.FixtureRequest) -> str:
    return state_for(request, request.param)


@pytest.fixture
def gw(make_gateway, upstream, state):
    return cache_gateway(make_gateway, upstream, state)


async def _ask(client: openai.AsyncOpenAI) -> tuple[str, str]:
    raw = await client.chat.completions.with_raw_response.create(model="small", messages=MSG, temperature=0)
    return raw.parse().choices[0].message.content, raw.headers["x-cache"]


async def _ask_stream(client: openai.AsyncOpenAI, upstream, firsts: list[int],
                      ids: list[set[str]] | None = None) -> str:
    """The streamed text; notes how many upstream streams had finished when its first chunk came."""
    stream = await client.chat.completions.create(model="small", messages=MSG, temperature=0, stream=True)
    text, seen = [], set()
    async for chunk in stream:
        if not text:
            firsts.append(upstream.completed_streams)
        text.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
        seen.add(chunk.id)
    if ids is not None:
        ids.append(seen)
    return "".join(text)


async def _until(check, within_s: float = 5.0) -> None:
    async with asyncio.timeout(within_s):
        while not check():
            await asyncio.sleep(0.005)


async def test_concurrent_identical_requests_make_one_upstream_call(gw, upstream):
    upstream.default = Fault(delay_s=0.5)
    client = gw.aclient("sk-acme", timeout=30.0)
    results = await asyncio.gather(*(_ask(client) for _ in range(N)))
    await client.close()
    assert upstream.calls == 1
    assert {text for text, _ in results} == {"Echo: what is the capital of France"}
    assert [status for _, status in results].count("HIT") == N - 1  # and the leader: MISS
    assert gw.services.cache_stats.coalesced == N - 1


async def test_streaming_followers_get_chunks_as_they_arrive(gw, upstream):
    upstream.default = Fault(chunk_delay_s=0.1)  # 7 words: the stream lasts ~0.7 s
    client = gw.aclient("sk-acme", timeout=30.0)
    firsts: list[int] = []
    ids: list[set[str]] = []
    leader = asyncio.create_task(_ask_stream(client, upstream, firsts, ids))
    await _until(lambda: upstream.calls == 1)
    followers = [asyncio.create_task(_ask_stream(client, upstream, firsts, ids)) for _ in range(10)]
    plain = [asyncio.create_task(_ask(client)) for _ in range(5)]  # non-stream followers of a stream
    texts = await asyncio.gather(leader, *followers)
    answers = await asyncio.gather(*plain)
    await client.close()
    assert upstream.calls == 1
    assert set(texts) == {"Echo: what is the capital of France"}
    assert firsts == [0] * 11  # every client saw its first chunk before the upstream stream ended
    assert all(len(seen) == 1 for seen in ids) and len(set().union(*ids)) == 11  # one id per answer
    assert answers == [("Echo: what is the capital of France", "HIT")] * 5


async def test_failing_leader_does_not_poison_followers(gw, upstream):
    upstream.push(Fault(status=400, delay_s=0.5))  # the leader's answer: an error, never shared
    client = gw.aclient("sk-acme", timeout=30.0)
    leader = asyncio.create_task(_ask(client))
    await _until(lambda: upstream.calls == 1)
    results = await asyncio.gather(*(_ask(client) for _ in range(10)), return_exceptions=True)
    with pytest.raises(openai.BadRequestError):
        await leader
    await client.close()
    assert [text for text, _ in results] == ["Echo: what is the capital of France"] * 10
    assert upstream.calls >= 2  # they went on their own


async def test_leader_leaving_does_not_cut_followers_off(gw, upstream):
    upstream.default = Fault(chunk_delay_s=0.1)
    client = gw.aclient("sk-acme", timeout=30.0)
    leader = await client.chat.completions.create(model="small", messages=MSG, temperature=0, stream=True)
    await _until(lambda: upstream.calls == 1)
    firsts: list[int] = []
    followers = [asyncio.create_task(_ask_stream(client, upstream, firsts)) for _ in range(3)]
    async for _chunk in leader:
        break
    await _until(lambda: len(firsts) == 3)  # every follower is streaming
    await leader.close()  # the first client hangs up mid-stream
    texts = await asyncio.gather(*followers)
    await client.close()
    assert texts == ["Echo: what is the capital of France"] * 3 and upstream.calls == 1
    assert upstream.cancelled == 0  # the shared stream was read to its end


async def test_everyone_leaving_cancels_the_upstream_stream(gw, upstream):
    upstream.default = Fault(chunk_delay_s=0.2)
    client = gw.aclient("sk-acme", timeout=30.0)
    stream = await client.chat.completions.create(model="small", messages=MSG, temperature=0, stream=True)
    async for _chunk in stream:
        break
    await stream.close()
    await client.close()
    await _until(lambda: upstream.cancelled == 1)
    assert len(gw.stage(CacheStage).flights) == 0
