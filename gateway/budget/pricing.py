"""Prices -> costs, exactly: integer pico-dollars per token, precomputed once per policy.

A price is written in USD per 1M tokens, so one token costs ``price * 1e6`` pico-dollars: an integer
for any price with at most six decimals, which covers every published price. Costs are sums of
``tokens * rate`` in Python integers, hence exact; ``usd()`` turns them into floats for display.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.policy.model import Price
from gateway.tokens import CHARS_PER_TOKEN
from gateway.usage import Usage

PICO_PER_USD = 10**12


def per_token(usd_per_million: float) -> int:
    """Pico-dollars per token for a price in USD per 1M tokens."""
    return round(usd_per_million * 1_000_000)


def pico(usd: float) -> int:
    """A USD amount (a budget) in pico-dollars."""
    return round(usd * PICO_PER_USD)


def usd(amount: int) -> float:
    return amount / PICO_PER_USD


@dataclass(frozen=True, slots=True)
class Rates:
    """Pico-dollars per token. ``cached_input`` and ``reasoning`` default to input and output."""

    input: int = 0
    cached_input: int = 0
    output: int = 0
    reasoning: int = 0
    priced: bool = False  # False: the model has no price; its cost counts as 0 ("unpriced")
    cache_write: int = 0
    # the dearest rate of a prompt token and of an output token (``worst_case``), derived once
    worst_input: int = field(init=False, compare=False)
    worst_output: int = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "worst_input", max(self.input, self.cached_input, self.cache_write))
        object.__setattr__(self, "worst_output", max(self.output, self.reasoning))


UNPRICED = Rates()


def rates_for(price: Price | None) -> Rates:
    if price is None:
        return UNPRICED
    inp, out = per_token(price.input), per_token(price.output)
    cached = inp if price.cached_input is None else per_token(price.cached_input)
    reasoning = out if price.reasoning is None else per_token(price.reasoning)
    write = inp if price.cache_write is None else per_token(price.cache_write)
    return Rates(inp, cached, out, reasoning, priced=True, cache_write=write)


def cost(usage: Usage, rates: Rates) -> int:
    """The exact cost of ``usage`` in pico-dollars.

    Cached prompt tokens are billed at ``cached_input``, prompt tokens written to the provider's cache
    at ``cache_write`` and the rest of the prompt at ``input``; reasoning tokens (part of the
    completion tokens, as OpenAI reports them) at ``reasoning`` and the rest of the completion at
    ``output``.
    """
    prompt = max(0, usage.prompt_tokens)
    completion = max(0, usage.completion_tokens)
    if usage.cached_tokens <= 0 and usage.cache_write_tokens <= 0 and usage.reasoning_tokens <= 0:
        return prompt * rates.input + completion * rates.output  # the usual usage: no special tokens
    cached = min(max(0, usage.cached_tokens), prompt)
    written = min(max(0, usage.cache_write_tokens), prompt - cached)
    reasoning = min(max(0, usage.reasoning_tokens), completion)
    return ((prompt - cached - written) * rates.input + cached * rates.cached_input + written * rates.cache_write
            + (completion - reasoning) * rates.output + reasoning * rates.reasoning)


MAX_RESERVATION = 2**53  # pico-dollars (~9,000 USD): exact in Lua's doubles, far from HINCRBY's 64-bit limit


def worst_case(prompt_tokens: int, output_tokens: int, rates: Rates) -> int:
    """The most a request can cost: every prompt token at the dearer input rate, every output
    token at the dearer output rate. What a budget reserves before the call.

    Capped at ``MAX_RESERVATION``: an absurd ``max_tokens`` on an unbounded model must be refused by
    the budget (or held, in shadow mode), not overflow the ledger's 64-bit counters into a Redis error.
    """
    amount = max(0, prompt_tokens) * rates.worst_input + max(0, output_tokens) * rates.worst_output
    return amount if amount < MAX_RESERVATION else MAX_RESERVATION


def estimate_usage(prompt_tokens_est: int, generated_chars: int) -> Usage:
    """Usage when the provider reported none (a cut stream, a disconnect, a silent provider).

    Documented heuristic: the gateway's prompt estimate (``gateway.tokens``, ~4 characters per
    token plus message framing) and one token per 4 characters of text actually generated.
    """
    completion = (max(0, generated_chars) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN
    return Usage(prompt_tokens=max(0, prompt_tokens_est), completion_tokens=completion, estimated=True)
