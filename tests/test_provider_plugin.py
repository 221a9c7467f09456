"""Recipe (a) of docs/architecture.md, the plug-in route, followed literally by a test.

A provider type defined outside ``gateway/providers`` (here, in this module) with an options dataclass
of one key is registered with ``register_provider``; a policy then uses ``type: toy`` with that key,
and a real gateway serves the official ``openai`` SDK through it.
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass

import orjson
import pytest

from gateway.policy.checkers import string
from gateway.policy.loader import PolicyError, load_policy_text
from gateway.policy.model import ProviderSpec
from gateway.providers.base import Provider, UpstreamRequest, UpstreamResponse
from gateway.providers.registry import PROVIDER_TYPES, ProviderKind, register_provider


@dataclass(frozen=True, slots=True)
class ToyOptions:
    greeting: str = "Hello"


TOY_OPTION_KEYS = {"greeting": string(nonempty=True)}


class ToyProvider(Provider):
    """Answers every chat request with its greeting and the last user message; calls nothing."""

    type = "toy"

    def __init__(self, spec: ProviderSpec) -> None:
        super().__init__(spec)
        self.options = spec.options if isinstance(spec.options, ToyOptions) else ToyOptions()
        self.seen: list[UpstreamRequest] = []

    async def send(self, req: UpstreamRequest) -> UpstreamResponse:
        self.seen.append(req)
        last = req.body["messages"][-1]["content"]
        text = f"{self.options.greeting}, {last}"
        body = {
            "id": f"toy-{req.request_id}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req.body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        }
        return UpstreamResponse(status=200, headers={}, body=orjson.dumps(body))


TOY = ProviderKind(ToyProvider, ToyOptions, TOY_OPTION_KEYS, needs_base_url=False)


def toy_policy(provider_keys: str) -> str:
    return textwrap.dedent("""\
        version: 1
        state:
          backend: memory
        providers:
          toyland:
            type: toy
        {keys}
        models:
          chat:
            price: {{input: 1.0, output: 2.0}}
            deployments:
              - {{provider: toyland, model: toy-1}}
        tenants:
          acme:
            api_keys: [sk-acme]
            models: "*"
        """).format(keys=textwrap.indent(provider_keys, " " * 4))


@pytest.fixture
def toy_type() -> Iterator[ProviderKind]:
    register_provider("toy", TOY)
    try:
        yield TOY
    finally:
        PROVIDER_TYPES.pop("toy", None)  # other tests list the built-in types exactly


def test_registered_type_serves_the_sdk_with_its_option(toy_type: ProviderKind, make_gateway) -> None:
    gw = make_gateway(toy_policy("greeting: Ahoy"))
    toy = gw.services.providers.get("toyland")
    assert isinstance(toy, ToyProvider) and toy.options == ToyOptions(greeting="Ahoy")

    out = gw.client("sk-acme").chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
    assert out.choices[0].message.content == "Ahoy, hi"
    assert out.usage is not None and out.usage.total_tokens == 5
    assert [r.body["model"] for r in toy.seen] == ["toy-1"]  # the deployment's model reached the provider


def test_the_option_has_its_default_when_absent(toy_type: ProviderKind) -> None:
    policy = load_policy_text(toy_policy(""), "toy.yaml", env={})
    assert policy.providers["toyland"].options == ToyOptions()


def test_unknown_key_under_the_toy_names_file_line_and_path(toy_type: ProviderKind) -> None:
    text = toy_policy("greting: Ahoy")
    line = text.splitlines().index("    greting: Ahoy") + 1
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, "toy.yaml", env={})
    assert [str(p) for p in info.value.problems] == [
        f"toy.yaml:{line}: providers.toyland.greting: unknown key 'greting' (did you mean 'greeting'?)"]


def test_the_option_is_checked_by_its_checker(toy_type: ProviderKind) -> None:
    text = toy_policy('greeting: ""')
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, "toy.yaml", env={})
    assert [p.message for p in info.value.problems] == ["must not be empty"]
    assert info.value.problems[0].path == "providers.toyland.greeting"


def test_registering_a_different_kind_under_a_taken_name_fails(toy_type: ProviderKind) -> None:
    register_provider("toy", toy_type)  # the same entry again is fine
    with pytest.raises(ValueError, match="already registered"):
        register_provider("toy", ProviderKind(ToyProvider))
    with pytest.raises(ValueError, match="already registered"):
        register_provider("openai", ProviderKind(ToyProvider))


def test_without_registration_the_type_is_unknown() -> None:
    assert "toy" not in PROVIDER_TYPES
    with pytest.raises(PolicyError) as info:
        load_policy_text(toy_policy("greeting: Ahoy"), "toy.yaml", env={})
    assert "providers.toyland.type: unknown provider type 'toy'" in str(info.value.problems[0])
