"""``upstream_headers``: what of an answer's headers is passed on, the same on the first answer and the memoised next."""

from __future__ import annotations

from types import SimpleNamespace

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.providers.openai import upstream_headers


def answer(*pairs: tuple[str, str]) -> SimpleNamespace:
    return SimpleNamespace(headers=CIMultiDictProxy(CIMultiDict(pairs)))


def test_hop_by_hop_and_entity_headers_are_dropped_and_names_lower_cased_last_value_winning() -> None:
    for _ in range(2):  # the second reads the memoised plan
        out = upstream_headers(answer(("Content-Type", "application/json"), ("Retry-After", "7"),
                                      ("X-RateLimit-Remaining", "5"), ("Date", "now"), ("Server", "s"),
                                      ("x-ratelimit-remaining", "4"), ("Content-Length", "2")))
        assert out == {"retry-after": "7", "x-ratelimit-remaining": "4"}
        assert list(out) == ["retry-after", "x-ratelimit-remaining"]


def test_only_hop_by_hop_headers_pass_nothing_and_the_same_names_with_new_values_read_the_new_values() -> None:
    assert upstream_headers(answer(("Content-Type", "a"), ("Date", "d"))) == {}
    assert upstream_headers(answer(("Retry-After", "1"), ("Date", "d"))) == {"retry-after": "1"}
    assert upstream_headers(answer(("Retry-After", "2"), ("Date", "e"))) == {"retry-after": "2"}
