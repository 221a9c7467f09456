"""``StateBatch.flush_sync`` answers as ``flush`` does: the same finishers called with the same replies
or error, in order, and the same verdict, whether every finisher has an op or not, the call fails, a
finisher waits or one answers (``complete`` answers nothing: the stage drops a ``Respond`` there)."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from gateway.pipeline import Respond
from gateway.stages.state_batch import StateBatch
from gateway.state import StateError

ANSWER = Respond(response=None, reason="over_limit")  # type: ignore[arg-type]


class Backend:
    """``run_fused`` and its plain form: each op's reply is its name, or the call fails."""

    def __init__(self, fail: bool) -> None:
        self.fail, self.sent = fail, []

    def run_now(self, ops: list[Any]) -> list[Any]:
        self.sent.append(list(ops))
        if self.fail:
            raise StateError("down")
        return [f"reply:{op}" for op in ops]

    async def run_fused(self, ops: list[Any]) -> list[Any]:
        return self.run_now(ops)


async def _later(verdict: Respond | None) -> Respond | None:
    return verdict


def _batch(phase: str, plan: list[tuple[str | None, str]], calls: list[Any]) -> StateBatch:
    """Finishers by kind: ``none`` answers nothing, ``answer`` a Respond, ``wait`` an awaitable of nothing."""
    batch = StateBatch()
    for n, (op, kind) in enumerate(plan):
        def finish(reply: Any, error: StateError | None, n: int = n, kind: str = kind) -> Any:
            calls.append((n, reply, None if error is None else str(error)))
            return ANSWER if kind == "answer" else _later(None) if kind == "wait" else None
        batch.add(phase, op, finish)
    return batch


PLANS = [
    [("a", "none"), ("b", "none")],
    [("a", "none"), (None, "none"), ("c", "none")],
    [(None, "none"), (None, "none")],
    [("a", "answer"), ("b", "none")],
    [("a", "none"), ("b", "wait"), ("c", "answer"), ("d", "none")],
    [(None, "wait"), ("b", "answer"), ("c", "none")],
    [("a", "none"), ("b", "answer"), ("c", "answer")],
]


@pytest.mark.parametrize("fail", [False, True])
@pytest.mark.parametrize("phase", ["admit", "complete"])
@pytest.mark.parametrize("plan", PLANS)
async def test_flush_sync_matches_flush(plan: list[tuple[str | None, str]], phase: str, fail: bool) -> None:
    async_calls: list[Any] = []
    reference = Backend(fail)
    expected = await _batch(phase, plan, async_calls).flush(reference, phase)  # type: ignore[arg-type]
    sync_calls: list[Any] = []
    backend = Backend(fail)
    got = _batch(phase, plan, sync_calls).flush_sync(backend.run_now, phase)
    if inspect.isawaitable(got):
        got = await got
    if phase == "complete":
        expected, got = (None if type(v) is Respond else v for v in (expected, got))
    assert (got, sync_calls, backend.sent) == (expected, async_calls, reference.sent)
