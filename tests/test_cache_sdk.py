"""The response cache through the openai SDK, on the in-process store and on a real Redis."""

from __future__ import annotations

import time

import openai
import pytest

from gateway.clock import FakeClock
from gateway.stages.cache import CacheStage
from tests.support.cache import CACHE_ON, MSG, cache_gateway, chat, chat_stream, eventually, state_for
from tests.support.mock_openai import Fault


@pytest.fixture(params=["memory", "redis"])
def state(request: pytest.FixtureRequest) -> str:
    return state_for(request, request.param)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def gw(make_gateway, upstream, state, clock):
    return cache_gateway(make_gateway, upstream, state, clock=clock)


def test_second_identical_call_is_a_hit_with_identical_content(gw, upstream, clock):
    clock.set(time.time())  # the mock stamps answers with the real time
    client = gw.client("sk-acme")
    text1, h1, out1 = chat(client)
    clock.advance(7)
    text2, h2, out2 = chat(client)
    assert h1["x-cache"] == "MISS" and h2["x-cache"] == "HIT"
    assert h2["age"] == "7"
    assert text2 == text1 == "Echo: what is the capital of France"
    # a new answer to a new request: its own id and time, the same content and usage
    assert out2.id != out1.id and out2.id.split("-", 1)[0] == out1.id.split("-", 1)[0]
    assert out2.created >= out1.created
    assert out2.model_dump(exclude={"id", "created"}) == out1.model_dump(exclude={"id", "created"})
    assert upstream.calls == 1
    stats = gw.services.cache_stats
    assert eventually(lambda: stats.stores == 1) and (stats.misses, stats.hits + stats.coalesced) == (1, 1)


def test_sampled_requests_are_not_cached_by_default(gw, upstream):
    client = gw.client("sk-acme")
    for _ in range(2):  # no temperature: the API default 1, a sampled answer
        _, headers, _ = chat(client, temperature=openai.NOT_GIVEN)
        assert headers["x-cache"] == "BYPASS"
    assert upstream.calls == 2
    assert "temperature" not in upstream.requests[-1]
    stats = gw.services.cache_stats
    assert (stats.hits, stats.stores) == (0, 0)


def test_every_hit_gets_a_fresh_id_and_created(gw, upstream, clock):
    clock.set(time.time())
    client = gw.client("sk-acme")
    _, h1, first = chat(client)
    clock.advance(3)
    served_at = int(clock.time())
    hits = [chat(client) for _ in range(2)]
    assert h1["x-cache"] == "MISS" and all(h["x-cache"] == "HIT" for _, h, _ in hits)
    ids = {first.id, *(out.id for _, _, out in hits)}
    assert len(ids) == 3 and all(i.startswith("cmpl-") for i in ids)  # the stored id's prefix
    assert all(out.created == served_at >= first.created for _, _, out in hits)
    assert all(out.choices[0].message.content == first.choices[0].message.content for _, _, out in hits)
    streamed, headers, chunks = chat_stream(client)
    assert headers["x-cache"] == "HIT" and streamed == first.choices[0].message.content
    assert len({c.id for c in chunks}) == 1 and chunks[0].id not in ids  # one new id for the whole stream
    assert {c.created for c in chunks} == {served_at}
    assert upstream.calls == 1


def test_nondeterministic_true_caches_requests_without_temperature(make_gateway, upstream, state):
    gw = cache_gateway(make_gateway, upstream, state, defaults="cache: {enabled: true, nondeterministic: true}")
    client = gw.client("sk-acme")
    _, h1, first = chat(client, temperature=openai.NOT_GIVEN)
    _, h2, second = chat(client, temperature=openai.NOT_GIVEN)
    assert (h1["x-cache"], h2["x-cache"]) == ("MISS", "HIT") and upstream.calls == 1
    assert second.id != first.id and second.choices[0].message.content == first.choices[0].message.content


def test_fields_that_do_not_change_the_answer_share_an_entry(gw, upstream):
    client = gw.client("sk-acme")
    chat(client, user="alice")
    _, headers, _ = chat(client, user="bob")
    assert headers["x-cache"] == "HIT" and upstream.calls == 1
    _, headers, _ = chat(client, max_tokens=2)  # changes the answer: a new entry
    assert headers["x-cache"] == "MISS" and upstream.calls == 2


def test_stream_after_non_stream(gw, upstream):
    client = gw.client("sk-acme")
    text, _, out = chat(client)
    streamed, headers, chunks = chat_stream(client)
    assert headers["x-cache"] == "HIT" and upstream.calls == 1
    assert streamed == text
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)  # not asked for
    _, _, chunks = chat_stream(client, stream_options={"include_usage": True})
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == out.usage.model_dump()
    assert upstream.calls == 1


def test_non_stream_after_stream(gw, upstream):
    client = gw.client("sk-acme")
    streamed, first, _ = chat_stream(client)
    assert first["x-cache"] == "MISS"
    text, headers, out = chat(client)
    assert headers["x-cache"] == "HIT" and upstream.calls == 1
    assert text == streamed == "Echo: what is the capital of France"
    assert out.object == "chat.completion" and out.choices[0].finish_reason == "stop"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (6, 7)  # the stream's usage chunk
    again, headers, _ = chat_stream(client)
    assert again == streamed and headers["x-cache"] == "HIT"


def test_legacy_completions_and_embeddings_are_cached(gw, upstream):
    client = gw.client("sk-acme")
    first = client.completions.create(model="small", prompt="say hi", temperature=0)
    raw = client.completions.with_raw_response.create(model="small", prompt="say hi", temperature=0, stream=True)
    chunks = list(raw.parse())
    text = "".join(c.choices[0].text for c in chunks)
    assert raw.headers["x-cache"] == "HIT" and text == first.choices[0].text == "Echo: say hi"
    assert {c.id for c in chunks} != {first.id} and len({c.id for c in chunks}) == 1
    client.embeddings.create(model="emb", input=["a", "b"])  # no sampling: cached without a temperature
    raw = client.embeddings.with_raw_response.create(model="emb", input=["a", "b"])
    assert raw.headers["x-cache"] == "HIT" and len(raw.parse().data) == 2
    assert upstream.calls == 2


def test_no_cache_skips_the_lookup_and_refreshes(gw, upstream):
    client = gw.client("sk-acme")
    chat(client)
    _, headers, _ = chat(client, headers={"Cache-Control": "no-cache"})
    assert headers["x-cache"] == "BYPASS" and upstream.calls == 2
    _, headers, _ = chat(client)
    assert headers["x-cache"] == "HIT" and headers["age"] == "0" and upstream.calls == 2


def test_no_store_never_writes(gw, upstream):
    client = gw.client("sk-acme")
    chat(client, headers={"Cache-Control": "no-store"})
    _, headers, _ = chat(client)
    assert headers["x-cache"] == "MISS" and upstream.calls == 2
    _, headers, _ = chat(client, headers={"Cache-Control": "no-store"})
    assert headers["x-cache"] == "HIT"  # no-store still reads


def test_max_age_accepts_only_younger_entries(gw, upstream, clock):
    client = gw.client("sk-acme")
    chat(client)
    clock.advance(30)
    _, headers, _ = chat(client, headers={"Cache-Control": "max-age=10"})
    assert headers["x-cache"] == "MISS" and upstream.calls == 2
    clock.advance(5)
    _, headers, _ = chat(client, headers={"cache-control": "max-age=10"})
    assert headers["x-cache"] == "HIT" and headers["age"] == "5"


def test_ttl_expires_and_header_lowers_it(gw, upstream, clock):
    client = gw.client("sk-acme")
    chat(client, headers={"x-gateway-cache-ttl": "5"})
    clock.advance(4)
    assert chat(client)[1]["x-cache"] == "HIT"
    clock.advance(2)
    assert chat(client)[1]["x-cache"] == "MISS"  # 6 s old, its own TTL was 5 s
    clock.advance(61)
    assert chat(client)[1]["x-cache"] == "MISS"  # the policy TTL (60 s) passed too
    chat(client, messages=[{"role": "user", "content": "other"}], headers={"x-gateway-cache-ttl": "0"})
    assert chat(client, messages=[{"role": "user", "content": "other"}])[1]["x-cache"] == "MISS"
    third = [{"role": "user", "content": "third"}]
    chat(client, messages=third, headers={"x-gateway-cache-ttl": "600"})
    clock.advance(61)
    assert chat(client, messages=third)[1]["x-cache"] == "MISS"  # the header lowers a TTL, never raises it


def test_tenant_isolation(gw, upstream):
    chat(gw.client("sk-acme"))
    _, headers, _ = chat(gw.client("sk-beta"))
    assert headers["x-cache"] == "MISS" and upstream.calls == 2
    assert chat(gw.client("sk-beta"))[1]["x-cache"] == "HIT"


def test_shared_mode_serves_every_sharing_tenant(make_gateway, upstream, state):
    defaults = "cache: {enabled: true, ttl_s: 60, shared: true}"
    extra = "gamma:\n  api_keys: [sk-gamma]\n  models: [small]\n  cache: {shared: false}\n"
    gw = cache_gateway(make_gateway, upstream, state, defaults=defaults, extra_tenant=extra)
    chat(gw.client("sk-acme"))
    assert chat(gw.client("sk-beta"))[1]["x-cache"] == "HIT"
    assert chat(gw.client("sk-gamma"))[1]["x-cache"] == "MISS"  # opted out: its own namespace
    assert upstream.calls == 2


def test_errors_are_never_cached(gw, upstream):
    client = gw.client("sk-acme")
    for status in (500, 400):
        upstream.default = Fault(status=status)
        with pytest.raises(openai.APIStatusError):
            chat(client)
    upstream.default = Fault()
    _, headers, _ = chat(client)
    assert headers["x-cache"] == "MISS"
    assert chat(client)[1]["x-cache"] == "HIT"
    stats = gw.services.cache_stats
    assert eventually(lambda: stats.stores == 1) and stats.skipped == 2


def test_cut_and_unfinished_streams_are_not_cached(gw, upstream):
    client = gw.client("sk-acme")
    for fault in (Fault(cut_after=2), Fault(no_done=True)):
        upstream.default = fault
        with pytest.raises(openai.APIError):
            chat_stream(client)
    upstream.default = Fault()
    assert chat(client)[1]["x-cache"] == "MISS"
    stats = gw.services.cache_stats
    assert eventually(lambda: stats.stores == 1) and stats.skipped == 2


def test_nondeterministic_requests_bypass_unless_opted_in(gw, upstream, make_gateway, state):
    client = gw.client("sk-acme")
    for _ in range(2):
        assert chat(client, temperature=0.7)[1]["x-cache"] == "BYPASS"
    chat(client, temperature=0.7, seed=7)
    assert chat(client, temperature=0.7, seed=7)[1]["x-cache"] == "HIT"
    chat(client, temperature=0)
    assert chat(client, temperature=0)[1]["x-cache"] == "HIT"
    assert upstream.calls == 4
    opted = cache_gateway(make_gateway, upstream, state, name="opted.yaml",
                          defaults="cache: {enabled: true, nondeterministic: true}")
    chat(opted.client("sk-acme"), temperature=0.9, messages=[{"role": "user", "content": "poem"}])
    assert chat(opted.client("sk-acme"), temperature=0.9,
                messages=[{"role": "user", "content": "poem"}])[1]["x-cache"] == "HIT"


def test_disabled_tenant_is_not_cached(make_gateway, upstream, state):
    extra = "gamma:\n  api_keys: [sk-gamma]\n  models: [small]\n  cache: {enabled: false}\n"
    gw = cache_gateway(make_gateway, upstream, state, extra_tenant=extra)
    client = gw.client("sk-gamma")
    chat(client)
    _, headers, _ = chat(client)
    assert "x-cache" not in headers and upstream.calls == 2


def test_stale_entry_answers_when_every_deployment_fails(make_gateway, upstream, state, clock):
    gw = cache_gateway(make_gateway, upstream, state, clock=clock,
                       extra_models="exp:\n  price: {input: 1.0, output: 2.0}\n  on_exhausted: stale\n"
                                    "  deployments:\n    - {provider: upstream, model: exp-a}\n")
    client = gw.client("sk-acme")
    text, _, _ = chat(client, model="exp")
    clock.advance(90)  # past the 60 s TTL, inside the stale window
    upstream.default = Fault(status=503)
    stale, headers, _ = chat(client, model="exp")
    assert headers["x-cache"] == "STALE" and headers["age"] == "90" and stale == text
    assert gw.services.cache_stats.stale == 1
    clock.advance(60)  # past the stale window too: nothing left to serve
    with pytest.raises(openai.APIStatusError):
        chat(client, model="exp")


def test_cache_reference_policy_keys_load(make_gateway, upstream):
    gw = cache_gateway(make_gateway, upstream, "backend: memory", defaults=CACHE_ON.replace(
        "}", ", max_entry_bytes: 100, max_bytes: 4096}"))
    client = gw.client("sk-acme")
    chat(client)  # the answer (~300 bytes) is above max_entry_bytes: not stored
    assert chat(client)[1]["x-cache"] == "MISS"
    stage = gw.stage(CacheStage)
    assert stage.memory.max_bytes == 4096 and stage.memory.used_bytes == 0


def test_messages_param_is_part_of_the_key(gw, upstream):
    client = gw.client("sk-acme")
    chat(client, messages=MSG)
    other = [{"role": "system", "content": "be brief"}, *MSG]
    _, headers, _ = chat(client, messages=other)
    assert headers["x-cache"] == "MISS"


def test_route_steering_headers_are_part_of_the_key(make_gateway, upstream, state):
    auto = ("auto:\n  route:\n    small: small\n    large: large\n    large_when:\n"
            "      - header: {x-gateway-tier: large}\n")
    gw = cache_gateway(make_gateway, upstream, state, extra_models=auto)
    client = gw.client("sk-acme")
    chat(client, model="auto")
    _, headers, _ = chat(client, model="auto", headers={"x-gateway-tier": "large"})
    assert headers["x-cache"] == "MISS" and upstream.requests[-1]["model"] == "large-a"
    _, headers, _ = chat(client, model="auto", headers={"x-gateway-tier": "large"})
    assert headers["x-cache"] == "HIT" and headers["x-gateway-model"] == "large"
    assert chat(client, model="auto")[1]["x-gateway-model"] == "small"
    assert upstream.calls == 2
