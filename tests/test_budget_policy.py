"""The policy's ``price:`` syntax: table references and overrides (error fixtures: test_policy_errors.py)."""

from __future__ import annotations

from gateway.policy.loader import load_policy_text
from gateway.policy.model import Price

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
    assert policy.models["overridden"].price == Price(input=3.0, output=12.5, cached_input=0.30, cache_write=3.75,
                                                                reasoning=20.0)
    assert policy.models["written"].price == Price(input=1.0, output=2.0, cached_input=0.5)
    assert policy.models["free"].price is None
    assert policy.warnings == ("p.yaml:14: models.free.price: no price; its cost counts as 0 (unpriced)",)


def test_price_table_name_can_come_from_the_environment():
    text = POLICY.replace("price: gpt-4o-mini", "price: ${MINI_PRICE:-gpt-4o}")
    assert load_policy_text(text, env={}).models["named"].price.input == 2.5
    assert load_policy_text(text, env={"MINI_PRICE": "gpt-4.1-nano"}).models["named"].price.input == 0.10
