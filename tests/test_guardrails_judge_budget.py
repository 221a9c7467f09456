"""The llm_judge's own budget: charged once per call id on memory and a real Redis, and once spent the
judge is not asked and its ``on_error`` decides, counted as ``over_budget_*`` (end to end, openai SDK)."""

from __future__ import annotations

import textwrap
from typing import Any

import openai
import pytest

from gateway.clock import FakeClock
from gateway.guardrails.judge_budget import JudgeBudget
from gateway.policy.model import Guardrail, ModelSpec, Price
from gateway.state import MemoryBackend, RedisBackend
from gateway.usage import Usage
from tests.support.prom import scrape
from tests.support.scripted_openai import Said
from tests.test_settle_idempotent import LostAnswer

TIMEOUTS = "{connect_s: 1, first_byte_s: 2, total_s: 10}"
VERDICTS = "llm_gateway_guardrail_verdicts_total"
GUARD = Guardrail("injection", "llm_judge", model="judge", prompt="score", budget_usd=0.000_05)
SPEC = ModelSpec("judge", price=Price(input=1.0, output=2.0))  # USD per 1M tokens
USAGE = Usage(prompt_tokens=10, completion_tokens=5)  # 10 * 1e-6 + 5 * 2e-6 = 2e-5 USD


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> Any:
    clock = FakeClock(1_750_000_000.0)
    if request.param == "memory":
        yield MemoryBackend(clock=clock, dlq_path=None), clock
        return
    b = RedisBackend(request.getfixturevalue("redis_url"), clock=clock, timeout_ms=5000)
    yield b, clock
    await b.close()


async def test_each_call_is_charged_once_and_the_budget_is_spent_per_period(backend):
    state, clock = backend
    budget = JudgeBudget(state, clock)
    assert await budget.charge("gw", GUARD, SPEC, USAGE, (0, 0), "r1") == 20_000_000  # pico-USD
    await budget.charge("gw", GUARD, SPEC, USAGE, (0, 0), "r1")  # a replay: counted once
    await budget.charge("gw", GUARD, SPEC, USAGE, (0, 0), "r2")
    assert not await budget.spent("gw", GUARD)  # 4e-5 of 5e-5
    await budget.charge("gw", GUARD, SPEC, None, (40, 20), "r3")  # no usage: 10 + 5 tokens estimated
    assert await budget.spent("gw", GUARD)
    clock.advance(86_400)  # a new day (budget_period: daily) starts from zero
    assert not await budget.spent("gw", GUARD)


async def test_a_charge_whose_answer_was_lost_is_sent_again_and_counts_once(backend):
    state, clock = backend
    lossy = LostAnswer(state)
    lossy.lose = 1  # applied, then a timeout: "unknown"
    budget, reader = JudgeBudget(lossy, clock), JudgeBudget(state, clock)  # type: ignore[arg-type]
    await budget.charge("gw", GUARD, SPEC, USAGE, (0, 0), "r1")
    await budget.charge("gw", GUARD, SPEC, USAGE, (0, 0), "r2")
    assert not await reader.spent("gw", GUARD)  # 4e-5: the lost charge did not count twice
    await budget.charge("gw", GUARD, SPEC, USAGE, (0, 0), "r3")
    assert await reader.spent("gw", GUARD)


@pytest.fixture
def gw(make_gateway, oai, judge, tmp_path):
    return make_gateway(textwrap.dedent(f"""\
        version: 1
        logging: {{access_log: 'off'}}
        state: {{backend: memory, dlq_path: '{tmp_path / 'dlq.jsonl'}'}}
        providers:
          primary: {{type: openai, base_url: "{oai.url}", api_key: sk-primary, timeouts: {TIMEOUTS}}}
          judging: {{type: openai, base_url: "{judge.url}", api_key: sk-judge, timeouts: {TIMEOUTS}}}
        guardrails:
          closed: {{kind: llm_judge, model: judge, prompt: "Score 0..1: injection?", on_error: block,
                    budget_usd: 0.00001}}
          open: {{kind: llm_judge, model: judge, prompt: "Score 0..1: injection?", on_error: allow,
                  budget_usd: 0.00001, budget_period: monthly}}
        models:
          gpt: {{deployments: [{{provider: primary, model: gpt-up}}]}}
          judge: {{price: {{input: 1, output: 1}}, deployments: [{{provider: judging, model: judge-small}}]}}
        tenants:
          strict: {{api_keys: [sk-strict], models: [gpt], guardrails: [closed]}}
          lenient: {{api_keys: [sk-lenient], models: [gpt], guardrails: [open]}}
        """))


def chat(gw, key: str) -> str | None:
    text = "what is the capital of norway, in one word please"
    answer = gw.client(key).chat.completions.create(model="gpt", messages=[{"role": "user", "content": text}])
    return answer.choices[0].message.content


def test_a_spent_judge_budget_applies_on_error_and_is_counted(gw, oai, judge):
    judge.say(Said(text="0.1"), Said(text="0.1"))  # each call: ~14 tokens at 1 USD/1M > the 1e-5 budget
    oai.say(Said(text="Oslo"), Said(text="Oslo"), Said(text="Oslo"))
    assert chat(gw, "sk-strict") == "Oslo"
    with pytest.raises(openai.BadRequestError) as info:
        chat(gw, "sk-strict")  # fail closed: the judge is not asked
    assert info.value.body["code"] == "guardrail_blocked" and "'closed'" in info.value.body["message"]
    assert judge.calls == 1
    assert chat(gw, "sk-lenient") == "Oslo"  # its own budget, still unspent
    assert chat(gw, "sk-lenient") == "Oslo"  # now spent: fail open
    assert judge.calls == 2 and oai.calls == 3
    prom = scrape(gw.url)
    assert prom.value(VERDICTS, guardrail="closed", stage="pre", verdict="allow") == 1
    assert prom.value(VERDICTS, guardrail="closed", stage="pre", verdict="over_budget_block") == 1
    assert prom.value(VERDICTS, guardrail="open", stage="pre", verdict="over_budget_allow") == 1
