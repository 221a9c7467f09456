"""The ordering rules written in ``gateway/stages/__init__.py``, one test each, on the real stage list."""

from __future__ import annotations

import re

import pytest

import gateway.stages
from gateway.observability.hub import Observability
from gateway.pipeline import Stage
from gateway.policy.loader import load_policy_text
from gateway.services import build_services
from gateway.stages import build_stages
from gateway.stages.audit import AuditStage, RedactUpstreamStage
from gateway.stages.budget import BudgetStage
from gateway.stages.cache import CacheStage
from gateway.stages.feedback_record import FeedbackRecordStage
from gateway.stages.guardrails import GuardrailStage
from gateway.stages.input_check import InputStage
from gateway.stages.observe import InFlightStage, ObserveStage
from gateway.stages.ratelimit import RateLimitStage
from gateway.stages.rollout import RolloutStage
from gateway.stages.router import RouterStage
from gateway.stages.state_batch import StateBatchStage
from gateway.stages.tracing import TracingStage
from gateway.stages.usage import UsageStage

RULE_TESTS = 12  # the tests below, one per numbered rule


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    services = build_services(load_policy_text("version: 1\n", "order.yaml", env={}))
    return build_stages(services, Observability(services))


def at(stages: list[Stage], cls: type[Stage]) -> int:
    """The index of the one stage of exactly type ``cls``."""
    found = [i for i, s in enumerate(stages) if type(s) is cls]
    assert len(found) == 1, f"{cls.__name__} appears {len(found)} times"
    return found[0]


def test_every_rule_in_the_docstring_has_a_test() -> None:
    rules = re.findall(r"^(\d+)\. ", gateway.stages.__doc__ or "", re.MULTILINE)
    assert rules == [str(i) for i in range(1, RULE_TESTS + 1)]


def test_rule_1_in_flight_first(stages: list[Stage]) -> None:
    assert at(stages, InFlightStage) == 0


def test_rule_2_audit_before_redact_upstream(stages: list[Stage]) -> None:
    assert at(stages, AuditStage) < at(stages, RedactUpstreamStage)


def test_rule_3_redact_upstream_before_cache(stages: list[Stage]) -> None:
    assert at(stages, RedactUpstreamStage) < at(stages, CacheStage)


def test_rule_4_cache_before_usage(stages: list[Stage]) -> None:
    assert at(stages, CacheStage) < at(stages, UsageStage)


def test_rule_5_router_before_budget_and_rate_limit(stages: list[Stage]) -> None:
    assert at(stages, RouterStage) < at(stages, BudgetStage)
    assert at(stages, RouterStage) < at(stages, RateLimitStage)


def test_rule_6_budget_before_rate_limit(stages: list[Stage]) -> None:
    assert at(stages, BudgetStage) < at(stages, RateLimitStage)


def test_rule_7_observe_last(stages: list[Stage]) -> None:
    assert at(stages, ObserveStage) == len(stages) - 1


def test_rule_8_guardrails_after_input_checks_and_before_cache(stages: list[Stage]) -> None:
    guard = at(stages, GuardrailStage)
    assert at(stages, InputStage) < guard and at(stages, AuditStage) < guard
    assert at(stages, RedactUpstreamStage) < guard < at(stages, CacheStage)


def test_rule_9_tracing_right_before_observe(stages: list[Stage]) -> None:
    assert at(stages, TracingStage) == at(stages, ObserveStage) - 1


def test_rule_10_rollout_right_after_input(stages: list[Stage]) -> None:
    assert at(stages, RolloutStage) == at(stages, InputStage) + 1
    assert at(stages, RolloutStage) < min(at(stages, CacheStage), at(stages, RouterStage), at(stages, BudgetStage))


def test_rule_11_state_batch_right_after_budget_rate_limit_and_feedback_record(stages: list[Stage]) -> None:
    assert at(stages, StateBatchStage) - 3 == at(stages, BudgetStage)
    assert at(stages, StateBatchStage) - 2 == at(stages, RateLimitStage)
    assert at(stages, StateBatchStage) - 1 == at(stages, FeedbackRecordStage)


def test_rule_12_feedback_record_after_budget_and_rate_limit(stages: list[Stage]) -> None:
    assert at(stages, BudgetStage) < at(stages, FeedbackRecordStage)
    assert at(stages, RateLimitStage) < at(stages, FeedbackRecordStage)
