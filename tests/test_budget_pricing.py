"""Unit tests for pure budget logic: prices, the default table, estimates, UTC periods."""

from __future__ import annotations

import datetime as dt

import pytest

from gateway.budget.periods import day_id, days, key_ttl_s, previous, window
from gateway.budget.pricing import (
    PICO_PER_USD,
    UNPRICED,
    cost,
    estimate_usage,
    per_token,
    pico,
    rates_for,
    usd,
    worst_case,
)
from gateway.policy.model import Price
from gateway.policy.prices import default_prices, lookup
from gateway.usage import Usage


def epoch(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()


# -- pricing --------------------------------------------------------------------------------------
def test_per_token_rates_are_exact_integers():
    assert per_token(0.15) == 150_000 and per_token(0.075) == 75_000 and per_token(0.0375) == 37_500
    assert per_token(2.5) == 2_500_000 and pico(5) == 5 * PICO_PER_USD


def test_plain_cost_matches_the_per_million_formula():
    rates = rates_for(Price(input=2.5, output=10.0))
    usage = Usage(prompt_tokens=1234, completion_tokens=567)
    assert cost(usage, rates) == 1234 * 2_500_000 + 567 * 10_000_000
    assert usd(cost(usage, rates)) == pytest.approx((1234 * 2.5 + 567 * 10.0) / 1e6, abs=1e-15)


def test_cached_prompt_tokens_use_the_cached_price():
    rates = rates_for(Price(input=0.15, output=0.60, cached_input=0.075))
    usage = Usage(prompt_tokens=1000, completion_tokens=10, cached_tokens=400)
    assert cost(usage, rates) == 600 * 150_000 + 400 * 75_000 + 10 * 600_000


def test_cache_writes_use_their_own_price_and_default_to_the_input_price():
    rates = rates_for(Price(input=3.0, output=15.0, cached_input=0.3, cache_write=3.75))
    usage = Usage(prompt_tokens=3000, completion_tokens=10, cached_tokens=1000, cache_write_tokens=1000)
    # 1000 plain at 3 + 1000 read at 0.3 + 1000 written at 3.75 (per 1M), 10 out at 15
    assert usd(cost(usage, rates)) == pytest.approx((3000 + 300 + 3750 + 150) / 1e6)
    plain = rates_for(Price(input=3.0, output=15.0))
    assert cost(Usage(prompt_tokens=100, cache_write_tokens=100), plain) == cost(Usage(prompt_tokens=100), plain)
    assert lookup("claude-sonnet-4-5").cache_write == 3.75


def test_cached_tokens_without_a_cached_price_cost_the_input_price():
    rates = rates_for(Price(input=1.0, output=2.0))
    assert cost(Usage(100, 0, cached_tokens=60), rates) == cost(Usage(100, 0), rates)


def test_reasoning_tokens_use_their_own_price_only_when_given():
    plain = rates_for(Price(input=1.0, output=4.0))
    split = rates_for(Price(input=1.0, output=4.0, reasoning=8.0))
    usage = Usage(prompt_tokens=10, completion_tokens=100, reasoning_tokens=70)
    assert cost(usage, plain) == 10 * 1_000_000 + 100 * 4_000_000  # reasoning is output by default
    assert cost(usage, split) == 10 * 1_000_000 + 30 * 4_000_000 + 70 * 8_000_000


def test_details_larger_than_their_totals_are_clamped():
    rates = rates_for(Price(input=1.0, output=2.0, cached_input=0.5, reasoning=3.0))
    assert cost(Usage(10, 5, cached_tokens=50, reasoning_tokens=50), rates) == 10 * 500_000 + 5 * 3_000_000


def test_unpriced_models_cost_nothing():
    assert rates_for(None) is UNPRICED and not UNPRICED.priced
    assert cost(Usage(10**6, 10**6), UNPRICED) == 0


def test_worst_case_uses_the_dearer_rates():
    rates = rates_for(Price(input=1.0, output=2.0, cached_input=3.0, reasoning=5.0))
    assert worst_case(100, 50, rates) == 100 * 3_000_000 + 50 * 5_000_000
    usage = Usage(100, 50, cached_tokens=30, reasoning_tokens=20)
    assert cost(usage, rates) <= worst_case(100, 50, rates)


def test_estimate_is_prompt_estimate_plus_a_token_per_four_characters():
    est = estimate_usage(40, 9)
    assert (est.prompt_tokens, est.completion_tokens, est.estimated) == (40, 3, True)
    assert estimate_usage(40, 0).completion_tokens == 0


# -- the default table ----------------------------------------------------------------------------
def test_default_table_has_common_models_with_sane_prices():
    table = default_prices()
    for name in ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "o3-mini", "claude-sonnet-4-5", "claude-3-5-haiku"):
        assert name in table
    for price in table.values():
        assert price.input >= 0 and price.output >= 0
        assert price.cached_input is None or price.cached_input <= price.input
    assert lookup("gpt-4o-mini") == Price(input=0.15, output=0.60, cached_input=0.075)
    assert lookup("no-such-model") is None


# -- periods --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kind", "now", "start", "end", "ident"), [
    ("daily", "2025-03-09T23:59:59", "2025-03-09T00:00:00", "2025-03-10T00:00:00", "d2025-03-09"),
    ("daily", "2025-03-10T00:00:00", "2025-03-10T00:00:00", "2025-03-11T00:00:00", "d2025-03-10"),
    ("weekly", "2025-03-09T12:00:00", "2025-03-03T00:00:00", "2025-03-10T00:00:00", "w2025-03-03"),  # Sunday
    ("weekly", "2025-03-10T00:00:00", "2025-03-10T00:00:00", "2025-03-17T00:00:00", "w2025-03-10"),  # Monday
    ("weekly", "2024-12-31T08:00:00", "2024-12-30T00:00:00", "2025-01-06T00:00:00", "w2024-12-30"),
    ("monthly", "2024-02-29T23:00:00", "2024-02-01T00:00:00", "2024-03-01T00:00:00", "m2024-02"),
    ("monthly", "2024-12-31T23:59:59", "2024-12-01T00:00:00", "2025-01-01T00:00:00", "m2024-12"),
])
def test_windows_follow_utc_calendar_boundaries(kind, now, start, end, ident):
    w = window(kind, epoch(now))
    assert (w.start, w.end, w.id) == (epoch(start), epoch(end), ident)
    assert w.contains(epoch(now)) and not w.contains(epoch(end))
    assert w.resets_at == end + "Z"


def test_total_never_resets_and_has_no_previous():
    w = window("total", epoch("2025-01-01T00:00:00"))
    assert w.end is None and w.resets_at is None and w.id == "total"
    assert previous(w) is None and key_ttl_s(w, 0) is None


def test_previous_windows():
    march = window("monthly", epoch("2025-03-15T00:00:00"))
    assert previous(march).id == "m2025-02"
    assert previous(window("monthly", epoch("2025-01-02T00:00:00"))).id == "m2024-12"
    assert previous(window("weekly", epoch("2025-03-10T00:00:00"))).id == "w2025-03-03"
    assert previous(window("daily", epoch("2025-03-01T00:00:00"))).id == "d2025-02-28"


def test_keys_outlive_the_next_window():
    now = epoch("2025-01-31T12:00:00")
    jan = window("monthly", now)
    ttl = key_ttl_s(jan, now)
    assert now + ttl == epoch("2025-03-02T00:00:00")  # end of February plus a day
    day = window("daily", now)
    assert now + key_ttl_s(day, now) == epoch("2025-02-03T00:00:00")


def test_days_of_a_window_up_to_now():
    now = epoch("2025-03-03T10:00:00")
    assert days(window("monthly", now), now) == ["2025-03-01", "2025-03-02", "2025-03-03"]
    feb = previous(window("monthly", now))
    listed = days(feb, now)
    assert listed[0] == "2025-02-01" and listed[-1] == "2025-02-28" and len(listed) == 28
    assert day_id(epoch("2025-03-03T23:59:59")) == "2025-03-03"
