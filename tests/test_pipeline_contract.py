"""The runner alone, with fake stages: the contract written on ``gateway.pipeline.Stage`` and its phases.

Each fake stage records every hook it runs into a shared log, so a test states the exact sequence the
runner must produce. The last tests drive ``gateway.http.server.Handler`` (which calls ``run``, writes
the answer and calls ``complete``) with a mocked aiohttp request, to hold "complete runs exactly once
per request" for success, an answered error, a bug and a client that leaves.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import make_mocked_request

from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.http.drain import Drain
from gateway.http.server import Handler
from gateway.pipeline import PHASES, GatewayResponse, Pipeline, Respond, Stage
from gateway.plan import Scope
from gateway.policy.loader import load_policy_text
from gateway.policy.model import Tenant

POLICY = load_policy_text("version: 1\n", "contract.yaml", env={})
Log = list[tuple[str, str]]
OK = GatewayResponse(status=200, body=b'{"ok": true}')


def make_ctx() -> RequestContext:
    return RequestContext(request_id="req-1", endpoint="chat", policy=POLICY, request=None,  # type: ignore[arg-type]
                          started=0.0, started_wall=0.0)


def fake_stage(name: str, log: Log, phases: tuple[str, ...] = (), answers: dict[str, Any] | None = None,
               filters: bool = False, complete: bool = False,
               complete_raises: bool = False, applies: Callable[[Scope], Any] | None = None,
               plain: bool = False) -> Stage:
    """A Stage subclass overriding only ``phases`` (plus ``on_response``/``complete`` when asked).

    ``answers[phase]`` is what that phase returns (a ``Respond``) or raises (an exception);
    ``applies`` is its plan hook (default: every hook, always); ``plain``: phases and ``complete`` are
    plain functions (hooks that never wait), not coroutine functions.
    """
    answers = answers or {}

    def phase_hook(phase: str) -> Callable[..., Any]:
        def answer_of(self: Stage, ctx: RequestContext) -> Respond | None:
            log.append((name, phase))
            answer = answers.get(phase)
            if isinstance(answer, BaseException):
                raise answer
            return answer

        async def hook(self: Stage, ctx: RequestContext) -> Respond | None:
            return answer_of(self, ctx)

        return answer_of if plain else hook

    namespace: dict[str, Any] = {"name": name, **{p: phase_hook(p) for p in phases}}
    if applies is not None:
        namespace["applies"] = lambda self, scope: applies(scope)
    if filters:
        async def on_response(self: Stage, ctx: RequestContext, resp: GatewayResponse) -> GatewayResponse:
            log.append((name, f"on_response:{resp.status}"))
            resp.headers[f"x-{name}"] = str(len(resp.headers))  # the order filters ran in shows in the values
            return resp

        namespace["on_response"] = on_response
    if complete or complete_raises:
        def completed(self: Stage, ctx: RequestContext, error: BaseException | None) -> None:
            log.append((name, f"complete:{type(error).__name__ if error else None}"))
            if complete_raises:
                raise RuntimeError(f"{name} failed to complete")

        async def complete_hook(self: Stage, ctx: RequestContext, error: BaseException | None) -> None:
            completed(self, ctx, error)

        namespace["complete"] = completed if plain else complete_hook
    return type(f"Fake{name.title()}Stage", (Stage,), namespace)()


async def test_phases_run_in_phases_order_across_stages_and_list_order_within_a_phase() -> None:
    log: Log = []
    reversed_phases = tuple(reversed(PHASES))  # how a stage lists its phases does not matter
    a = fake_stage("a", log, reversed_phases)
    b = fake_stage("b", log, PHASES, answers={"call_upstream": Respond(OK)})
    resp = await Pipeline([a, b]).run(make_ctx())
    assert resp.status == 200
    assert log == [(s, p) for p in PHASES for s in ("a", "b")]


async def test_plain_function_hooks_run_in_order_answer_and_complete_like_coroutine_ones(
        caplog: pytest.LogCaptureFixture) -> None:
    """A hook that never waits may be a plain function: its verdict is taken as returned, not awaited."""
    log: Log = []
    a = fake_stage("a", log, ("authenticate", "route"), plain=True, complete_raises=True)
    b = fake_stage("b", log, ("authenticate", "admit"), complete=True)
    c = fake_stage("c", log, ("admit",), answers={"admit": Respond(OK, "plain")}, plain=True, complete=True)
    d = fake_stage("d", log, ("call_upstream",), answers={"call_upstream": Respond(OK)}, complete=True)
    pipeline = Pipeline([a, b, c, d])
    ctx = make_ctx()
    assert (await pipeline.run(ctx)).status == 200 and ctx.outcome == "plain"
    with caplog.at_level(logging.ERROR, logger="gateway.pipeline"):
        await pipeline.complete(ctx, None)
    assert log == [("a", "authenticate"), ("b", "authenticate"), ("a", "route"), ("b", "admit"), ("c", "admit"),
                   ("a", "complete:None"), ("b", "complete:None"), ("c", "complete:None"), ("d", "complete:None")]
    assert [r.getMessage() for r in caplog.records if r.name == "gateway.pipeline"] == [
        f"complete failed in {a}"]


async def test_a_stage_runs_only_the_phases_it_overrides() -> None:
    log: Log = []
    a = fake_stage("a", log, ("route",))
    b = fake_stage("b", log, ("check_input",))
    c = fake_stage("c", log, ("authenticate", "call_upstream"), answers={"call_upstream": Respond(OK)})
    await Pipeline([a, b, c]).run(make_ctx())
    assert log == [("c", "authenticate"), ("b", "check_input"), ("a", "route"), ("c", "call_upstream")]


async def test_base_class_defaults_are_never_called(monkeypatch: pytest.MonkeyPatch) -> None:
    """The do-nothing defaults are skipped, not called: an unused phase costs nothing."""
    called: list[str] = []

    def tripwire(hook: str) -> Callable[..., Any]:
        async def default(self: Stage, *args: Any) -> Any:
            called.append(f"{self.name}.{hook}")
            return args[-1] if hook == "on_response" else None

        return default

    for hook in (*PHASES, "on_response", "complete"):
        monkeypatch.setattr(Stage, hook, tripwire(hook))
    log: Log = []
    pipeline = Pipeline([fake_stage("a", log, ("route",)),
                         fake_stage("b", log, ("call_upstream",), answers={"call_upstream": Respond(OK)})])
    ctx = make_ctx()
    resp = await pipeline.run(ctx)
    await pipeline.complete(ctx, None)
    assert resp.status == 200
    assert log == [("a", "route"), ("b", "call_upstream")]
    assert called == []


async def test_respond_stops_every_later_phase_but_every_filter_runs_on_the_early_answer() -> None:
    log: Log = []
    early = GatewayResponse(status=429, body=b"{}")
    a = fake_stage("a", log, ("authenticate", "check_input", "route", "call_upstream"),
                   answers={"check_input": Respond(early, "over_limit")}, filters=True)
    b = fake_stage("b", log, ("check_input", "limit_requests", "call_upstream"), filters=True)
    c = fake_stage("c", log, ("admit",), filters=True)
    ctx = make_ctx()
    resp = await Pipeline([a, b, c]).run(ctx)
    assert log == [("a", "authenticate"), ("a", "check_input"),
                   ("a", "on_response:429"), ("b", "on_response:429"), ("c", "on_response:429")]
    assert resp is early and resp.headers == {"x-a": "0", "x-b": "1", "x-c": "2"}
    assert ctx.outcome == "over_limit"
    assert ctx.error is None


async def test_phases_are_marked_only_for_a_traced_request() -> None:
    log: Log = []

    class Trace(Stage):
        async def authenticate(self, ctx: RequestContext) -> None:
            ctx.phase_marks = []  # what the tracing stage does for a traced request

    answer = fake_stage("a", log, ("cache_lookup",), answers={"cache_lookup": Respond(OK, "cache_hit")})
    pipeline = Pipeline([Trace(), answer])
    traced = make_ctx()
    await pipeline.run(traced)
    await pipeline.complete(traced, None)
    assert traced.phase_marks is not None
    names = [name for name, _ in traced.phase_marks]
    assert names == ["check_input", "limit_requests", "cache_lookup", "respond", "complete"]
    times = [t for _, t in traced.phase_marks]
    assert times == sorted(times)
    untraced = make_ctx()
    await Pipeline([answer]).run(untraced)
    assert untraced.phase_marks is None


async def test_filters_wrap_the_stream_the_earlier_filters_produced() -> None:
    async def source() -> AsyncIterator[bytes]:
        yield b"x"

    class Wrap(Stage):
        def __init__(self, tag: bytes) -> None:
            self.tag = tag

        async def on_response(self, ctx: RequestContext, resp: GatewayResponse) -> GatewayResponse:
            inner = resp.events
            assert inner is not None

            async def wrapped() -> AsyncIterator[bytes]:
                async for item in inner:
                    yield self.tag + b"(" + item + b")"

            resp.events = wrapped()
            return resp

    class Answer(Stage):
        async def call_upstream(self, ctx: RequestContext) -> Respond:
            return Respond(GatewayResponse(status=200, events=source()))

    resp = await Pipeline([Wrap(b"a"), Answer(), Wrap(b"b")]).run(make_ctx())
    assert resp.events is not None
    assert [item async for item in resp.events] == [b"b(a(x))"]


async def test_a_gateway_error_becomes_the_response_and_ctx_error() -> None:
    log: Log = []
    err = GatewayError(429, "slow down", code="rate_limited", headers={"retry-after": "3"}, outcome="over_limit")
    a = fake_stage("a", log, ("limit_requests", "call_upstream"), answers={"limit_requests": err}, filters=True)
    b = fake_stage("b", log, ("cache_lookup",), filters=True)
    ctx = make_ctx()
    resp = await Pipeline([a, b]).run(ctx)
    assert resp.status == 429
    assert orjson.loads(resp.body or b"") == {
        "error": {"message": "slow down", "type": "rate_limit_error", "param": None, "code": "rate_limited"}}
    assert resp.headers["retry-after"] == "3"
    assert ctx.error is err
    assert ctx.outcome == "over_limit"
    assert log == [("a", "limit_requests"), ("a", "on_response:429"), ("b", "on_response:429")]


async def test_an_error_keeps_an_outcome_a_stage_already_set() -> None:
    class Shed(Stage):
        async def admit(self, ctx: RequestContext) -> None:
            ctx.outcome = "over_budget"
            raise GatewayError(402, "budget spent")

    ctx = make_ctx()
    resp = await Pipeline([Shed()]).run(ctx)
    assert (resp.status, ctx.outcome, ctx.error.status if ctx.error else None) == (402, "over_budget", 402)


async def test_a_bug_is_not_swallowed_by_the_runner() -> None:
    """Only GatewayError becomes an answer inside ``run``; the handler turns the rest into a 500."""
    log: Log = []
    a = fake_stage("a", log, ("route",), answers={"route": KeyError("oops")})
    with pytest.raises(KeyError):
        await Pipeline([a]).run(make_ctx())


async def test_a_request_no_stage_answers_is_a_500_no_upstream() -> None:
    log: Log = []
    a = fake_stage("a", log, PHASES, filters=True)
    ctx = make_ctx()
    resp = await Pipeline([a]).run(ctx)
    assert resp.status == 500
    assert orjson.loads(resp.body or b"")["error"]["code"] == "no_upstream"
    assert ctx.error is not None and ctx.error.code == "no_upstream"
    assert ctx.outcome == "error"
    assert log[-1] == ("a", "on_response:500")
    assert await Pipeline([]).run(make_ctx()) is not None  # an empty list answers the same way


async def test_complete_runs_once_per_stage_in_list_order_even_where_no_phase_ran() -> None:
    log: Log = []
    err = GatewayError(401, "who are you")
    a = fake_stage("a", log, ("authenticate",), answers={"authenticate": err}, complete=True)
    b = fake_stage("b", log, complete=True)  # no phases at all
    c = fake_stage("c", log, ("call_upstream",), complete=True)  # its phase never ran
    d = fake_stage("d", log, ("route",))  # no complete of its own
    pipeline = Pipeline([a, b, c, d])
    ctx = make_ctx()
    await pipeline.run(ctx)
    await pipeline.complete(ctx, ctx.error)
    assert log == [("a", "authenticate"),
                   ("a", "complete:GatewayError"), ("b", "complete:GatewayError"), ("c", "complete:GatewayError")]


async def test_one_failing_complete_is_logged_and_the_others_still_run(caplog: pytest.LogCaptureFixture) -> None:
    log: Log = []
    stages = [fake_stage("a", log, complete=True), fake_stage("b", log, complete_raises=True),
              fake_stage("c", log, complete=True)]
    with caplog.at_level(logging.ERROR, logger="gateway.pipeline"):
        await Pipeline(stages).complete(make_ctx(), None)
    assert log == [("a", "complete:None"), ("b", "complete:None"), ("c", "complete:None")]
    failures = [r for r in caplog.records if r.name == "gateway.pipeline"]
    assert len(failures) == 1 and "complete failed" in failures[0].getMessage()
    assert failures[0].exc_info is not None and "b failed to complete" in str(failures[0].exc_info[1])


async def test_complete_now_runs_plain_completes_in_place_and_returns_the_rest_from_the_first_that_waits(
        caplog: pytest.LogCaptureFixture) -> None:
    log: Log = []
    plain = [fake_stage("a", log, complete=True, plain=True), fake_stage("b", log, complete=True, plain=True)]
    assert Pipeline(plain).complete_now(make_ctx(), None) is None  # nothing to wait for: no coroutine at all
    assert log == [("a", "complete:None"), ("b", "complete:None")]

    log.clear()
    mixed = [fake_stage("a", log, complete=True, plain=True), fake_stage("w", log, complete_raises=True),
             fake_stage("c", log, complete_raises=True, plain=True), fake_stage("d", log, complete=True)]
    with caplog.at_level(logging.ERROR, logger="gateway.pipeline"):
        pending = Pipeline(mixed).complete_now(make_ctx(), None)
        assert log == [("a", "complete:None")]  # the waiting one's body runs only when awaited
        assert pending is not None
        await pending
    assert log == [("a", "complete:None"), ("w", "complete:None"), ("c", "complete:None"), ("d", "complete:None")]
    failed = [str(r.exc_info[1]) for r in caplog.records if r.name == "gateway.pipeline" and r.exc_info]
    assert failed == ["w failed to complete", "c failed to complete"]  # each logged, the rest still ran


# -- the plan: which hooks a request runs ----------------------------------------------------------

TENANTS = {name: Tenant(name=name, api_keys=(), models=("m",)) for name in ("with", "without")}


def resolver(log: Log, name: str = "input") -> Stage:
    """A fake input stage: its ``check_input`` names the tenant (from the request id) and the model."""

    class Resolve(Stage):
        async def check_input(self, ctx: RequestContext) -> None:
            log.append((name, "check_input"))
            ctx.tenant, ctx.public_model = TENANTS[ctx.request_id], "m"

    return Resolve()


def only_for(tenant: str) -> Callable[[Scope], bool]:
    """A plan hook: the entry plan, and requests of ``tenant``."""
    return lambda scope: scope.tenant is None or scope.tenant.name == tenant


async def test_a_stage_that_does_not_apply_runs_no_hook_once_the_plan_is_chosen() -> None:
    log: Log = []
    feature = fake_stage("feature", log, ("check_input", "limit_requests", "admit"), filters=True, complete=True,
                         applies=only_for("with"))
    early = fake_stage("early", log, ("check_input",), applies=only_for("with"))  # before the resolver
    answer = fake_stage("up", log, ("call_upstream",), answers={"call_upstream": Respond(OK)})
    pipeline = Pipeline([early, resolver(log), feature, answer])
    for tenant in ("without", "with"):
        log.clear()
        ctx = make_ctx()
        ctx.request_id = tenant
        await pipeline.run(ctx)
        await pipeline.complete(ctx, None)
        ran = [entry for entry in log if entry[0] == "feature"]
        if tenant == "with":
            assert ran == [("feature", "check_input"), ("feature", "limit_requests"), ("feature", "admit"),
                           ("feature", "on_response:200"), ("feature", "complete:None")]
        else:
            assert ran == []
        # a hook before the one that names the tenant ran under the entry plan, whoever asks
        assert log[:2] == [("early", "check_input"), ("input", "check_input")]
        assert ctx.plan is not None and ctx.plan.scope.tenant is TENANTS[tenant]


async def test_a_hook_can_apply_alone() -> None:
    log: Log = []
    split = fake_stage("split", log, ("admit",), complete=True,
                       applies=lambda scope: True if scope.tenant is None else frozenset({"complete"}))
    answer = fake_stage("up", log, ("call_upstream",), answers={"call_upstream": Respond(OK)})
    pipeline = Pipeline([resolver(log), split, answer])
    ctx = make_ctx()
    ctx.request_id = "with"
    await pipeline.run(ctx)
    await pipeline.complete(ctx, None)
    assert log == [("input", "check_input"), ("up", "call_upstream"), ("split", "complete:None")]


async def test_a_request_that_ends_before_its_plan_completes_every_stage_of_the_entry_plan() -> None:
    log: Log = []
    err = GatewayError(401, "who are you")
    auth = fake_stage("auth", log, ("authenticate",), answers={"authenticate": err}, complete=True)
    feature = fake_stage("feature", log, ("admit",), complete=True, applies=only_for("with"))
    unused = fake_stage("unused", log, ("admit",), complete=True, applies=lambda scope: False)  # nobody's
    pipeline = Pipeline([auth, resolver(log), feature, unused])
    ctx = make_ctx()
    await pipeline.run(ctx)
    await pipeline.complete(ctx, ctx.error)
    assert log == [("auth", "authenticate"), ("auth", "complete:GatewayError"), ("feature", "complete:GatewayError")]


async def test_plans_are_memoised_per_policy_and_rebuilt_on_reload() -> None:
    log: Log = []
    pipeline = Pipeline([resolver(log), fake_stage("up", log, ("call_upstream",), answers={"call_upstream": Respond(OK)})])
    pipeline.on_policy(POLICY)
    first, second = make_ctx(), make_ctx()
    first.request_id = second.request_id = "with"
    await pipeline.run(first)
    await pipeline.run(second)
    assert first.plan is second.plan and len(pipeline.plans) == 2  # the entry plan and the tenant's
    pipeline.on_policy(POLICY)
    third = make_ctx()
    third.request_id = "with"
    await pipeline.run(third)
    assert third.plan is not first.plan


async def test_a_request_begun_before_a_reload_switches_to_a_plan_compiled_afresh() -> None:
    """The memo of where requests switch to their own plan belongs to the policy it was filled under: a
    request that switches after a reload gets its plan compiled afresh, as ``plan_for`` does."""
    log: Log = []
    gate = asyncio.Event()
    gate.set()

    class Waits(Stage):
        async def authenticate(self, ctx: RequestContext) -> None:
            await gate.wait()

    pipeline = Pipeline([Waits(), resolver(log),
                         fake_stage("up", log, ("call_upstream",), answers={"call_upstream": Respond(OK)})])
    pipeline.on_policy(POLICY)
    first = make_ctx()
    first.request_id = "with"
    await pipeline.run(first)
    gate.clear()
    late = make_ctx()
    late.request_id = "with"
    running = asyncio.create_task(pipeline.run(late))
    await asyncio.sleep(0)  # waiting in ``authenticate``, before its switch
    pipeline.on_policy(load_policy_text("version: 1\n", "contract.yaml", env={}))
    gate.set()
    assert (await running) is OK
    assert late.plan is not None and late.plan is not first.plan and late.plan.scope.policy is POLICY
    again = make_ctx()
    again.request_id = "with"
    await pipeline.run(again)  # under the old policy still: compiled afresh each time, never memoised
    assert again.plan is not late.plan


# -- through the handler: complete runs exactly once per request, whatever happened ------------------

def make_handler(stages: list[Stage]) -> Handler:
    services = SimpleNamespace(holder=SimpleNamespace(current=POLICY), backend=SimpleNamespace(kind="memory"))
    return Handler(services, Pipeline(stages), Drain())  # type: ignore[arg-type]


def request() -> Any:
    return make_mocked_request("POST", "/v1/chat/completions", headers={"x-request-id": "r-7"})


async def test_handler_completes_once_on_success_and_on_an_answered_error() -> None:
    log: Log = []
    ok = fake_stage("ok", log, ("call_upstream",), answers={"call_upstream": Respond(OK)}, complete=True)
    out = await make_handler([ok]).handle(request(), "chat")
    assert out.status == 200
    assert log == [("ok", "call_upstream"), ("ok", "complete:None")]

    log.clear()
    denied = fake_stage("no", log, ("authenticate",), answers={"authenticate": GatewayError(401, "no")},
                        complete=True)
    out = await make_handler([denied]).handle(request(), "chat")
    assert out.status == 401
    assert log == [("no", "authenticate"), ("no", "complete:GatewayError")]


async def test_handler_turns_a_bug_into_a_500_and_completes_once_with_it() -> None:
    log: Log = []
    bug = fake_stage("bug", log, ("route",), answers={"route": KeyError("oops")}, complete=True)
    out = await make_handler([bug]).handle(request(), "chat")
    assert out.status == 500
    assert orjson.loads(out.body)["error"]["code"] == "internal_error"  # type: ignore[attr-defined]
    assert log == [("bug", "route"), ("bug", "complete:KeyError")]


async def test_handler_completes_once_when_the_client_leaves() -> None:
    log: Log = []
    entered = asyncio.Event()

    class Hang(Stage):
        async def call_upstream(self, ctx: RequestContext) -> None:
            entered.set()
            await asyncio.sleep(30)

    done = fake_stage("done", log, complete=True)
    task = asyncio.create_task(make_handler([Hang(), done]).handle(request(), "chat"))
    await asyncio.wait_for(entered.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert log == [("done", "complete:CancelledError")]


def test_the_handler_builds_the_context_by_position_in_this_order() -> None:
    from dataclasses import fields

    assert [f.name for f in fields(RequestContext)][:7] == [
        "request_id", "endpoint", "policy", "request", "started", "started_wall", "surface"]
