"""What the input quality gate costs per request: microseconds of validation, in process.

Times the body checks the ``check_input`` phase runs after parsing (common fields, the endpoint's
fields with content parts and tools, the nesting-depth bound) on: a small chat request (what most
traffic looks like), one with tools and a JSON-schema ``response_format``, a 10,000-message chat,
and a body just over the bracket count that triggers the nesting-depth check. The JSON parse is timed
alongside as the yardstick the checks should stay well below.

Usage: ``python benchmarks/bench_input_check.py [--seconds 0.5]``. Needs nothing but the package.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gateway.stages.input_check import (  # noqa: E402
    MAX_DEPTH,
    _check_common,
    _check_depth,
    _check_endpoint,
)

TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {
    "type": "object", "properties": {"q": {"type": "string"}, "filters": {"type": "array", "items": {
        "type": "object", "properties": {"field": {"type": "string"}, "value": {"type": "string"}}}}}}}}
BODIES = {
    "small chat": {"model": "m", "messages": [{"role": "system", "content": "Be brief."},
                                              {"role": "user", "content": "Hello, how are you today?"}],
                   "temperature": 0, "max_tokens": 64},
    "tools + json_schema": {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "Find it"}, {"type": "image_url", "image_url": {"url": "data:,"}}]}],
        "tools": [TOOL] * 8, "tool_choice": "auto",
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": TOOL["function"]}}},
    "10,000 messages": {"model": "m", "messages": [{"role": "user" if i % 2 == 0 else "assistant",
                                                    "content": f"message {i}"} for i in range(10_000)]},
    f"{MAX_DEPTH + 1} brackets (depth check)": {"model": "m", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "x"}] * (MAX_DEPTH // 2)}]},
}


def per_call_us(fn: Callable[[], object], seconds: float) -> float:
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(10):
            fn()
        n += 10
    return elapsed / n * 1e6


def checks(raw: bytes, body: dict) -> None:
    _check_depth(raw, body)
    _check_common(body)
    _check_endpoint("chat", body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="time per measurement")
    args = parser.parse_args()
    print(f"{'body':<32} {'bytes':>9} {'parse us':>10} {'checks us':>10} {'checks/parse':>13}")
    for name, body in BODIES.items():
        raw = orjson.dumps(body)
        parse = per_call_us(lambda raw=raw: orjson.loads(raw), args.seconds)
        check = per_call_us(lambda raw=raw, body=body: checks(raw, body), args.seconds)
        print(f"{name:<32} {len(raw):>9,} {parse:>10.2f} {check:>10.2f} {check / parse:>12.2f}x")


if __name__ == "__main__":
    main()
