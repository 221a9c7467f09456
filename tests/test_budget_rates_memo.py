"""The budget stage keeps each model's rates (``BudgetStage._rates_of``): a request is still priced by
the ``ModelSpec`` it holds, so one admitted before a reload that changed the price keeps the old one."""

from __future__ import annotations

from gateway.budget.pricing import rates_for
from gateway.policy.loader import load_policy_text
from gateway.services import build_services
from gateway.stages.budget import BudgetStage

POLICY = """\
version: 1
providers:
  up: {type: mock}
models:
  m:
    price: {input: PRICE, output: 2}
    deployments: [{provider: up, model: a}]
"""


def test_rates_follow_the_spec_a_request_holds_across_a_reload():
    old = load_policy_text(POLICY.replace("PRICE", "1"), "p.yaml", env={})
    new = load_policy_text(POLICY.replace("PRICE", "3"), "p.yaml", env={})
    stage = BudgetStage(build_services(old))
    stage.on_policy(old)
    old_spec, new_spec = old.models["m"], new.models["m"]
    assert stage._rates(old_spec) == rates_for(old_spec.price)
    assert stage._rates_of["m"] == (old_spec, rates_for(old_spec.price))
    stage.on_policy(new)
    assert stage._rates_of == {}  # a reload starts afresh
    assert stage._rates(new_spec) == rates_for(new_spec.price) != rates_for(old_spec.price)
    assert stage._rates(old_spec) == rates_for(old_spec.price)  # in flight since before the reload
    assert stage._rates_of["m"] == (old_spec, rates_for(old_spec.price))
    assert stage._rates(None) == rates_for(None)
