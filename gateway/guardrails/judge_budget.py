"""The llm_judge's own budget: what its calls cost per period, kept in the state backend.

Each judge guardrail with ``budget_usd`` has one counter per period (``<tag>:judge:<name>:<period id>``,
integer pico-dollars, shared by every replica). Before a call the judge reads it: once it reaches the
budget the call is not made and the guardrail's ``on_error`` decides (``over_budget_allow`` /
``over_budget_block``). After a call its cost (the judge model's price times the usage it reported,
or an estimate) is added by a script that applies each charge id once, so a charge whose answer was
lost can be sent again without counting twice. Admission is a read, not a reservation: judge calls
running at the same moment may overshoot the budget by their own cost.
"""

from __future__ import annotations

import logging
from typing import Any

from gateway.budget.periods import key_ttl_s, window
from gateway.budget.pricing import cost, estimate_usage, pico, rates_for
from gateway.clock import Clock
from gateway.policy.model import Guardrail, ModelSpec
from gateway.state.base import LocalStore, Script, StateBackend, StateError, hash_tag
from gateway.usage import Usage

log = logging.getLogger("gateway.guardrails")
CHARGE_ID_TTL_MS = 6 * 3600 * 1000  # how long a charge id is remembered (replays within it are no-ops)

# KEYS: spent, charge id   ARGV: amount (pico-USD), id ttl ms, spent ttl ms (0: none)
_CHARGE_LUA = """
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[2]) then
  local spent = redis.call('INCRBY', KEYS[1], ARGV[1])
  if tonumber(ARGV[3]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
  return {'ok', tostring(spent)}
end
return {'dup', redis.call('GET', KEYS[1]) or '0'}
"""


def _charge_local(store: LocalStore, keys: list[str], args: list[Any], now: float) -> list[str]:
    if store.get(keys[1]) is not None:
        return ["dup", str(store.get(keys[0], 0))]
    store.set(keys[1], 1, int(args[1]) / 1000)
    spent = int(store.get(keys[0], 0)) + int(args[0])
    store.set(keys[0], spent)
    if int(args[2]) > 0:
        store.expire(keys[0], int(args[2]) / 1000)
    return ["ok", str(spent)]


CHARGE = Script(name="judge_charge", lua=_CHARGE_LUA, local=_charge_local)


class JudgeBudget:
    """Reads and charges the judges' spend counters through the (metered) state backend."""

    def __init__(self, backend: StateBackend, clock: Clock) -> None:
        self.backend = backend
        self.clock = clock

    def _keys(self, prefix: str, guard: Guardrail, now: float) -> tuple[str, str, float | None]:
        """(the guardrail's key tag, its counter for the period holding ``now``, the counter's ttl)."""
        period = window(guard.budget_period, now)
        tag = hash_tag(prefix, f"judge:{guard.name}")
        return tag, f"{tag}:judge:{period.id}", key_ttl_s(period, now)

    async def spent(self, prefix: str, guard: Guardrail) -> bool:
        """Has ``guard`` spent its budget this period? Raises ``StateError`` when it cannot tell."""
        if guard.budget_usd is None:
            return False
        _, key, _ = self._keys(prefix, guard, self.clock.time())
        return int(await self.backend.get(key) or 0) >= pico(guard.budget_usd)

    async def charge(self, prefix: str, guard: Guardrail, spec: ModelSpec, usage: Usage | None,
                     chars: tuple[int, int], charge_id: str) -> int:
        """Add one call's cost (pico-USD, returned) once; ``chars`` (prompt, answer) estimate missing usage."""
        if guard.budget_usd is None:
            return 0
        if usage is None:
            usage = estimate_usage(-(-chars[0] // 4), chars[1])
        amount = cost(usage, rates_for(spec.price))
        tag, key, ttl_s = self._keys(prefix, guard, self.clock.time())
        args = [amount, CHARGE_ID_TTL_MS, 0 if ttl_s is None else max(1, round(ttl_s * 1000))]
        keys = [key, f"{tag}:judge-charged:{charge_id}"]
        for attempt in (1, 2):  # a lost answer is "unknown": sending the same id again is safe
            try:
                await self.backend.run(CHARGE, keys, args)
                return amount
            except StateError as exc:
                log.warning("guardrail %s: judge charge %s not confirmed (try %d): %s", guard.name, charge_id,
                            attempt, exc)
        return amount
