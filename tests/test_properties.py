"""Property tests (hypothesis): request validators, surface translators, the cache key, the SSE parser.

Bodies are arbitrary JSON whose keys and string values are drawn mostly from the string constants of
the modules under test (field names, roles, block and item types), so generated bodies reach deep
into the validators instead of failing at the first key. The property for every validator and
translator: it returns, or raises a ``GatewayError`` with a 4xx status; never anything else.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
from collections import Counter
from types import ModuleType
from typing import Any
from unittest import mock

import orjson
from aiohttp import StreamReader
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.cache.key import cache_key, canonical, is_deterministic
from gateway.errors import GatewayError
from gateway.http import sse
from gateway.stages import input_check
from gateway.surfaces import anthropic_content, anthropic_request, responses_items, responses_request
from gateway.surfaces.anthropic_request import messages_to_chat
from gateway.surfaces.responses_request import responses_to_chat
from gateway.tokens import prompt_tokens

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEWER = settings(SETTINGS, max_examples=80)  # the cache-key properties draw two large bodies each
SEEN: Counter[str] = Counter()  # outcomes per property, printed by the last test


def words(*modules: ModuleType) -> list[str]:
    """The short string constants of ``modules``: the vocabulary their validators look for."""
    found: set[str] = set()
    for module in modules:
        for node in ast.walk(ast.parse(inspect.getsource(module))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and 0 < len(node.value) <= 40 \
                    and "\n" not in node.value:
                found.add(node.value)
    return sorted(found)


def json_values(vocab: list[str], leaves: int = 20) -> st.SearchStrategy[Any]:
    """Any JSON value: keys and strings mostly from ``vocab``; objects often carry a ``type``/``role``."""
    names = st.sampled_from(vocab) | st.text(max_size=6)
    scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
               | st.floats(allow_nan=False, allow_infinity=False) | names)

    def nest(kids: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        objects = st.dictionaries(names, kids, max_size=4)
        typed = st.builds(lambda tag, k, rest: {**rest, k: tag}, st.sampled_from(vocab),
                          st.sampled_from(["type", "role"]), objects)
        return st.lists(kids, max_size=3) | objects | typed

    return st.recursive(scalars, nest, max_leaves=leaves)


def json_bodies(vocab: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Arbitrary JSON objects (mostly refused at the first field)."""
    return st.dictionaries(st.sampled_from(vocab) | st.text(max_size=6), json_values(vocab), max_size=6)


def near_valid(vocab: list[str], base: dict[str, Any], items: str, roles: list[str]) -> st.SearchStrategy[dict]:
    """``base`` with ``items`` a list of role/type-tagged objects whose content is text or typed blocks,
    overlaid with a few arbitrary fields: bodies that get past the first checks."""
    names = st.sampled_from(vocab)
    values = json_values(vocab, 8)
    block = st.builds(lambda tag, rest: {**rest, "type": tag}, names, st.dictionaries(names, values, max_size=4))
    content = names | st.text(max_size=10) | st.lists(block, max_size=3)
    item = st.builds(lambda role, tag, body, rest: {**rest, "role": role, "type": tag, "content": body},
                     st.sampled_from(roles), names, content, st.dictionaries(names, values, max_size=3))
    return st.builds(lambda listed, extra: {**base, items: listed, **extra},
                     st.lists(item, min_size=1, max_size=3), st.dictionaries(names, values, max_size=4))


CHAT_WORDS = words(input_check)
ANTHROPIC_WORDS = words(anthropic_request, anthropic_content)
RESPONSES_WORDS = words(responses_request, responses_items)


def assert_4xx(err: GatewayError) -> None:
    assert 400 <= err.status < 500, (err.status, err.message)
    assert err.message and orjson.loads(err.body())["error"]["message"] == err.message


def validate(endpoint: str, body: dict[str, Any]) -> None:
    """What the input stage does with a body, short of the policy: parse, depth, fields, estimate."""
    raw = orjson.dumps(body)
    parsed = input_check.parse_json_body(raw)
    input_check._check_depth(raw, parsed)
    input_check._check_common(parsed)
    input_check._ENDPOINT_CHECKS.get(endpoint, input_check._check_embeddings)(parsed)  # as InputStage._check
    assert prompt_tokens(endpoint, parsed) >= 0
    is_deterministic(parsed, endpoint)
    canonical(endpoint, "small", parsed)


@SETTINGS
@given(endpoint=st.sampled_from(["chat", "completions", "embeddings"]),
       body=json_bodies(CHAT_WORDS) | near_valid(CHAT_WORDS, {"model": "small", "prompt": "p", "input": "i"},
                                                 "messages", sorted(input_check.ROLES)))
def test_request_validators_raise_only_4xx(endpoint: str, body: dict[str, Any]) -> None:
    try:
        validate(endpoint, body)
        SEEN["validators accepted"] += 1
    except GatewayError as err:
        assert_4xx(err)
        SEEN["validators refused"] += 1


@SETTINGS
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_bytes_are_json_or_a_400(raw: bytes) -> None:
    try:
        input_check.parse_json_body(raw)
    except GatewayError as err:
        assert err.status == 400 and err.code == "invalid_json"


@SETTINGS
@given(body=json_bodies(ANTHROPIC_WORDS) | near_valid(ANTHROPIC_WORDS, {"model": "small", "max_tokens": 16},
                                                        "messages", ["user", "assistant"]))
def test_messages_translator_raises_only_4xx(body: dict[str, Any]) -> None:
    body.setdefault("model", "small")
    try:
        chat, dropped = messages_to_chat(body)
    except GatewayError as err:
        assert_4xx(err)
        SEEN["messages refused"] += 1
        return
    orjson.dumps(chat)  # what goes on is JSON again
    assert all(isinstance(d, str) for d in dropped)
    SEEN["messages translated"] += 1


@SETTINGS
@given(body=json_bodies(RESPONSES_WORDS) | near_valid(RESPONSES_WORDS, {"model": "small"}, "input",
                                                        ["user", "assistant", "system", "developer"]),
       history=st.none() | st.just([{"role": "user", "content": "earlier"}]))
def test_responses_translator_raises_only_4xx(body: dict[str, Any], history: list[dict] | None) -> None:
    body.setdefault("model", "small")
    try:
        chat, dropped = responses_to_chat(body, history)
    except GatewayError as err:
        assert_4xx(err)
        SEEN["responses refused"] += 1
        return
    orjson.dumps(chat)
    assert all(isinstance(d, str) for d in dropped)
    SEEN["responses translated"] += 1


def shuffled(value: Any, rnd: st.DataObject) -> Any:
    """The same JSON value with every object's keys in another order."""
    if isinstance(value, dict):
        keys = rnd.draw(st.permutations(list(value)))
        return {k: shuffled(value[k], rnd) for k in keys}
    if isinstance(value, list):
        return [shuffled(v, rnd) for v in value]
    return value


@FEWER
@given(body=json_bodies(CHAT_WORDS), data=st.data())
def test_cache_key_is_stable_under_key_order(body: dict[str, Any], data: st.DataObject) -> None:
    again = shuffled(body, data)
    assert cache_key("gw", "acme", False, "chat", "small", body) == cache_key("gw", "acme", False, "chat",
                                                                              "small", again)


RELEVANT = st.sampled_from(["messages", "temperature", "top_p", "seed", "max_tokens", "stop", "n", "tools",
                            "tool_choice", "response_format", "prompt", "input", "a_future_field"])


@FEWER
@given(body=json_bodies(CHAT_WORDS), field=RELEVANT, value=json_bodies(CHAT_WORDS),
       tenant=st.sampled_from(["acme", "beta", "shared"]))
def test_cache_key_differs_when_a_relevant_field_or_the_scope_does(body: dict[str, Any], field: str,
                                                                   value: dict, tenant: str) -> None:
    base = cache_key("gw", "acme", False, "chat", "small", body)
    changed = {**body, field: value}
    if body.get(field) != value:
        assert cache_key("gw", "acme", False, "chat", "small", changed) != base
    assert cache_key("gw", "acme", False, "completions", "small", body) != base
    assert cache_key("gw", "acme", False, "chat", "large", body) != base
    if tenant != "acme":
        assert cache_key("gw", tenant, False, "chat", "small", body) != base
    assert cache_key("gw", "acme", True, "chat", "small", body) != base
    ignored = {**body, "user": "someone", "stream": True, "metadata": {"x": 1}}
    assert cache_key("gw", "acme", False, "chat", "small", ignored) == base


# -- SSE ---------------------------------------------------------------------------------------------
line_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=30)
events = st.lists(st.tuples(st.none() | st.from_regex(r"[a-z_.]{1,12}", fullmatch=True),
                            st.lists(line_text, min_size=1, max_size=3)), min_size=1, max_size=8)


def encode(stream: list[tuple[str | None, list[str]]], crlf: bool, comments: bool) -> bytes:
    end = "\r\n" if crlf else "\n"
    out = []
    for name, lines in stream:
        if comments:
            out.append(f": keep-alive{end}id: 7{end}")
        if name is not None:
            out.append(f"event: {name}{end}")
        out.extend(f"data: {line}{end}" for line in lines)
        out.append(end)
    return "".join(out).encode()


async def parse(chunks: list[bytes]) -> list[tuple[bytes | None, bytes]]:
    reader = StreamReader(mock.Mock(_reading_paused=False), 2**16, loop=asyncio.get_running_loop())
    for chunk in chunks:
        reader.feed_data(chunk)
    reader.feed_eof()
    return [item async for item in sse.iter_sse(reader)]


@SETTINGS
@given(stream=events, crlf=st.booleans(), comments=st.booleans(), data=st.data())
def test_sse_parser_yields_the_same_events_however_the_stream_is_chunked(stream, crlf, comments, data) -> None:
    raw = encode(stream, crlf, comments)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(raw) - 1)), max_size=12)))
    chunks = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True) if raw[a:b]]
    expected = [(None if name is None else name.encode(), "\n".join(lines).encode()) for name, lines in stream]
    assert asyncio.run(parse(chunks)) == expected
    assert asyncio.run(parse([raw])) == expected
    SEEN["sse chunks"] += len(chunks)


def test_zz_print_figures() -> None:
    """Prints how many generated examples each property accepted and refused (runs last in the file)."""
    print(f"\nhypothesis examples: {dict(SEEN)}")
