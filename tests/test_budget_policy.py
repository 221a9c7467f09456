"""The policy's ``price:`` syntax: table references, overrides, and one fixture per error."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.policy.loader import PolicyError, load_policy, load_policy_text
from gateway.policy.model import Price

FIXTURES = Path(__file__).parent / "budget_fixtures"

EXPECTED = {
    "price_table_unknown.yaml":
        "{file}:7: models.small.price: unknown price table entry 'gpt-4o-mni' (did you mean 'gpt-4o-mini'?)",
    "price_table_unknown_in_mapping.yaml":
        "{file}:7: models.small.price.table: unknown price table entry 'gpt5' (did you mean 'gpt-5'?)",
    "price_table_no_close_match.yaml":
        "{file}:7: models.small.price: unknown price table entry 'mistral-large' (see gateway/data/prices.yaml)",
    "price_missing_output.yaml": "{file}:7: models.small.price: missing required key 'output'",
    "price_unknown_key.yaml": "{file}:7: models.small.price.tabel: unknown key 'tabel' (did you mean 'table'?)",
    "price_override_negative.yaml": "{file}:7: models.small.price.cached_input: must not be negative, got -1",
    "price_not_a_mapping.yaml": "{file}:7: models.small.price: expected a price table entry name or a mapping "
                                "(input, output, ...), got integer 5",
}


def test_every_fixture_has_an_expectation():
    assert sorted(p.name for p in FIXTURES.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_gives_exactly_its_message(name: str):
    path = FIXTURES / name
    with pytest.raises(PolicyError) as info:
        load_policy(str(path), env={})
    assert [str(p) for p in info.value.problems] == [EXPECTED[name].format(file=path)]


POLICY = """\
version: 1
providers:
  up: {type: mock}
models:
  named:
    price: gpt-4o-mini
    deployments: [{provider: up, model: a}]
  overridden:
    price: {table: claude-sonnet-4-5, output: 12.5, reasoning: 20}
    deployments: [{provider: up, model: b}]
  written:
    price: {input: 1, output: 2, cached_input: 0.5}
    deployments: [{provider: up, model: c}]
  free:
    deployments: [{provider: up, model: d}]
"""


def test_price_forms_load_and_an_unpriced_model_is_a_warning():
    policy = load_policy_text(POLICY, "p.yaml", env={})
    assert policy.models["named"].price == Price(input=0.15, output=0.60, cached_input=0.075)
    assert policy.models["overridden"].price == Price(input=3.0, output=12.5, cached_input=0.30, reasoning=20.0)
    assert policy.models["written"].price == Price(input=1.0, output=2.0, cached_input=0.5)
    assert policy.models["free"].price is None
    assert policy.warnings == ("p.yaml:14: models.free.price: no price; its cost counts as 0 (unpriced)",)


def test_price_table_name_can_come_from_the_environment():
    text = POLICY.replace("price: gpt-4o-mini", "price: ${MINI_PRICE:-gpt-4o}")
    assert load_policy_text(text, env={}).models["named"].price.input == 2.5
    assert load_policy_text(text, env={"MINI_PRICE": "gpt-4.1-nano"}).models["named"].price.input == 0.10
