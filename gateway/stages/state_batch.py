"""One state call per phase: the stages' state work of ``admit`` and of ``complete``, sent together.

The budget and rate-limit stages keep their concerns: each builds its own op (``gateway.state.fused``)
and a ``finish`` that turns the op's reply, or the call's ``StateError``, into its verdict and
bookkeeping (fallback modes, journals, leases). Instead of calling the backend, they add both to
``ctx.state_batch``; this stage, listed after them, sends the ops of the phase as one
``backend.run_fused`` call (one Redis round trip, pipelined with other requests') and then runs the
finishers in the order the ops were added. A finisher returns its verdict, or an awaitable the flush
awaits when it must wait (a call of its own, a queue): one that never waits is a plain function and
costs no coroutine. In ``admit`` the first refusal answers the request and the finishers after it
are skipped (their ops did nothing after the refusal); in ``complete`` every finisher runs. An op may be ``None``: a stage that must work alone (its backend is known to be down,
it waits in a queue) still gets its turn, in order, after the call.

On the memory backend (``sync_fused``: the metered call as a plain function) the flush is a plain
function too (``flush_sync``): a coroutine only from a finisher that must wait.

A stage may also add an op only when the phase makes a call anyway (``sends``): the feedback
record's ``SetOp`` rides ``complete``'s call that way (``gateway.stages.feedback_record``).

The batch exists from ``check_input`` on; a stage that finds no batch (a request that ended earlier,
a pipeline built without this stage) calls the backend itself, as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from gateway.context import RequestContext
from gateway.pipeline import Respond, Stage, Verdict
from gateway.state import StateBackend, StateError
from gateway.state.fused import FusedOp

Finish = Callable[[Any, StateError | None], Verdict | Awaitable[Verdict]]


class StateBatch(dict[str, tuple[list[FusedOp | None], list[Finish]]]):
    """The ops of the current phase and their finishers, in the order the stages added them.

    A dict (one per request: no ``__init__`` or attribute of its own to build) of phase -> the ops,
    ``None`` where a finisher has none, and the finishers, position by position; a flush sends the ops
    as they are unless some are ``None`` (rare: a stage working alone).
    """

    __slots__ = ()

    def add(self, phase: str, op: FusedOp | None, finish: Finish) -> None:
        """Queue ``op`` (``None``: no part in the call) for ``phase`` (``admit`` | ``complete``)."""
        queued = self.get(phase)
        if queued is None:
            self[phase] = ([op], [finish])
        else:
            queued[0].append(op)
            queued[1].append(finish)

    def queued(self) -> int:
        """Entries queued, every phase together."""
        return sum(len(finishers) for _, finishers in self.values())

    def sends(self, phase: str) -> bool:
        """Will ``phase``'s flush make a call (some op of it is not ``None``)? Read by a stage whose
        small write may ride that call but must not cost one of its own (the feedback record)."""
        queued = self.get(phase)
        if queued is None:
            return False
        ops = queued[0]
        return None not in ops or ops.count(None) < len(ops)  # (the common case read first)

    def flush_now(self, backend: StateBackend, phase: str) -> Awaitable[Verdict] | None:
        """``flush``, without a coroutine when ``phase`` queued nothing (other phases' ops are dropped)."""
        if phase in self:
            return self.flush(backend, phase)
        self.clear()
        return None

    def _take(self, phase: str) -> tuple[list[FusedOp | None], list[Finish]] | None:
        """What ``phase`` queued, taken out; other phases' ops (an ``admit`` never finished) are dropped."""
        queued = self.pop(phase, None)
        if self:
            self.clear()
        return queued

    def flush_sync(self, run_now: Callable[[list[FusedOp]], list[Any]], phase: str) -> Verdict | Awaitable[Verdict]:
        """``flush`` on a backend whose call never waits (memory; ``run_now`` is its plain ``run_fused``):
        no coroutine unless a finisher must wait (then the rest runs in one, from that finisher on)."""
        queued = self._take(phase)
        if queued is None:
            return None
        ops, finishers = queued
        if None in ops:  # rare: a stage working alone
            return _finish_sync(run_now, ops, finishers, None, phase)
        try:
            replies = run_now(ops)
        except StateError as exc:
            return _finish_sync(None, ops, finishers, exc, phase)
        n = 0  # every finisher has an op: the reply at its own position
        for finish in finishers:
            verdict = finish(replies[n], None)
            n += 1  # noqa: SIM113 - a counter costs less than ``enumerate``, and ``_answer`` takes it
            if verdict is not None and (type(verdict) is not Respond or phase == "admit"):
                return _answer(verdict, ops, finishers, n, n, replies, None, phase)
        return None

    async def flush(self, backend: StateBackend, phase: str) -> Verdict:
        """One call for the ops of ``phase``, then each finisher with its reply (or the call's error).

        Ops of another phase (an ``admit`` the request never finished) are dropped unsent. In
        ``admit`` the first answer stops the finishers after it.
        """
        queued = self._take(phase)
        if queued is None:
            return None
        ops, finishers = queued
        sent = _sent(ops)
        replies: list[Any] = []
        error: StateError | None = None
        if sent:
            try:
                replies = await backend.run_fused(sent)
            except StateError as exc:
                error = exc
        return await _finish_from(ops, finishers, 0, 0, replies, error, phase)


def _sent(ops: list[FusedOp | None]) -> list[FusedOp]:
    """The ops a flush sends: ``ops`` itself unless some finisher has none."""
    return ops if None not in ops else [op for op in ops if op is not None]  # type: ignore[misc]


def _finish_sync(run_now: Callable[[list[FusedOp]], list[Any]] | None, ops: list[FusedOp | None],
                 finishers: list[Finish], error: StateError | None, phase: str) -> Verdict | Awaitable[Verdict]:
    """``flush_sync``'s rare cases: a finisher without an op (then ``run_now`` sends the others, if any),
    or the call's ``error`` (``run_now`` None: it was made); each finisher with its op's reply or the error."""
    replies: list[Any] = []
    failed = error
    sent = _sent(ops)
    if sent and run_now is not None:
        try:
            replies = run_now(sent)
        except StateError as exc:
            failed = exc
    n = i = 0  # the finisher's position; the reply of the next one with an op
    for finish in finishers:
        if ops[n] is None:
            verdict = finish(None, None)
        else:
            verdict = finish(replies[i] if failed is None else None, failed)
            i += 1
        n += 1  # noqa: SIM113 - as in ``flush_sync``
        if verdict is not None and (type(verdict) is not Respond or phase == "admit"):
            return _answer(verdict, ops, finishers, n, i, replies, failed, phase)
    return None


def _answer(verdict: Verdict | Awaitable[Verdict], ops: list[FusedOp | None], finishers: list[Finish], n: int, i: int,
            replies: list[Any], error: StateError | None, phase: str) -> Verdict | Awaitable[Verdict]:
    """A finisher's answer (``admit``'s first stops the rest), or the rest in a coroutine from one that waits."""
    if type(verdict) is Respond:
        return verdict
    return _finish_rest(verdict, ops, finishers, n, i, replies, error, phase)  # type: ignore[arg-type]


async def _finish_rest(pending: Awaitable[Verdict], ops: list[FusedOp | None], finishers: list[Finish], at: int,
                       i: int, replies: list[Any], error: StateError | None, phase: str) -> Verdict:
    """``flush_sync`` on from the finisher that returned ``pending`` to await: as ``flush`` does."""
    answer = await pending
    if answer is not None and phase == "admit":
        return answer
    return await _finish_from(ops, finishers, at, i, replies, error, phase, answer)


async def _finish_from(ops: list[FusedOp | None], finishers: list[Finish], at: int, i: int, replies: list[Any],
                       error: StateError | None, phase: str, answer: Verdict = None) -> Verdict:
    """The finishers from ``at`` on (``i``: the reply of the first with an op), each awaited when it
    returns an awaitable; the first answer is kept, and in ``admit`` it stops the rest."""
    for n in range(at, len(finishers)):
        finish = finishers[n]
        if ops[n] is None:
            verdict = finish(None, None)
        else:
            verdict = finish(replies[i] if error is None else None, error)
            i += 1
        if verdict is not None and not isinstance(verdict, Respond):
            verdict = await verdict  # type: ignore[misc]
        if verdict is not None and answer is None:
            answer = verdict
            if phase == "admit":
                break
    return answer


class StateBatchStage(Stage):
    """Flushes ``ctx.state_batch`` in ``admit`` and ``complete``; listed after the stages that fill it."""

    name = "state_batch"

    def __init__(self, backend: StateBackend) -> None:
        self.backend = backend
        sync_fused = getattr(backend, "sync_fused", None)  # memory: the call as a plain function (metered)
        self._now: Callable[[list[FusedOp]], list[Any]] | None = sync_fused() if sync_fused is not None else None

    def check_input(self, ctx: RequestContext) -> Verdict:
        ctx.state_batch = StateBatch()
        return None

    def admit(self, ctx: RequestContext) -> Awaitable[Verdict] | None:
        """The flush itself, for the runner to await: no coroutine of this stage's around it."""
        batch = ctx.state_batch
        if not batch:  # no batch, or nothing queued (a tenant without limits or budget): nothing to send
            return None
        now = self._now
        return batch.flush_now(self.backend, "admit") if now is None else batch.flush_sync(now, "admit")

    def complete(self, ctx: RequestContext, error: BaseException | None) -> Awaitable[Verdict] | None:
        batch = ctx.state_batch
        if not batch:
            return None
        now = self._now
        if now is None:
            return batch.flush_now(self.backend, "complete")
        done = batch.flush_sync(now, "complete")
        return None if done is None or type(done) is Respond else done  # complete answers nothing
