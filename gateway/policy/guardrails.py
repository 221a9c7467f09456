"""The ``guardrails`` block: named checks, each with the keys of its kind, and the names that use them.

Pass 3 builds one frozen ``Guardrail`` per entry (unknown kinds, keys another kind owns and bad
regexes are errors); pass 4 checks that every name a tenant or a model lists is declared.
"""

from __future__ import annotations

from typing import Any, get_args
from urllib.parse import urlsplit

from gateway.policy import model as m
from gateway.policy.checkers import (
    BAD,
    BOOLEAN,
    NAME,
    REGEX,
    Checker,
    enum,
    fields,
    integer,
    list_of,
    number,
    string,
)
from gateway.policy.problems import Report

KINDS = get_args(m.GuardrailKind)
STAGES = ("pre", "post")
COMMON: dict[str, Checker] = {
    "kind": enum("guardrail kind", KINDS),
    "on": list_of(enum("guardrail stage", STAGES), nonempty=True),
    "action": enum("guardrail action", get_args(m.GuardrailAction)),
    "mode": enum("mode", get_args(m.Mode)),
    "stream": enum("stream mode", get_args(m.StreamCheck)),
    "window_chars": integer(gt=0),
    "window_overlap_chars": integer(ge=0),
}
OWN: dict[str, dict[str, Checker]] = {
    "pii": {},
    "deny": {"patterns": list_of(REGEX), "keywords": list_of(string(nonempty=True))},
    "max_prompt": {"max_chars": integer(gt=0), "max_tokens": integer(gt=0)},
    "json_schema": {},
    "webhook": {"url": string(nonempty=True), "timeout_ms": number(gt=0),
                "on_error": enum("on_error action", ("allow", "block")), "redact": BOOLEAN},
    "llm_judge": {"model": string(nonempty=True), "prompt": string(nonempty=True),
                  "threshold": number(ge=0, le=1), "timeout_ms": number(gt=0),
                  "on_error": enum("on_error action", ("allow", "block")),
                  "budget_usd": number(gt=0), "budget_period": enum("budget period", get_args(m.Period))},
}
ONLY_ON = {"max_prompt": "pre", "json_schema": "post"}  # kinds that only make sense on one side
NO_REDACT = ("max_prompt", "json_schema", "webhook", "llm_judge")  # nothing to redact (webhooks modify)
NEEDS_ONE_OF = {"deny": ("patterns", "keywords"), "max_prompt": ("max_chars", "max_tokens")}
REQUIRED = {"webhook": ("url",), "llm_judge": ("model", "prompt")}


def build_guardrail(name: str, raw: Any, path: str, report: Report) -> m.Guardrail | None:
    """One guardrail: its kind first, then the common keys and that kind's own."""
    if not isinstance(raw, dict) or "kind" not in raw:
        fields(COMMON, required=("kind",))(raw, path, report)
        return None
    kind = COMMON["kind"](raw["kind"], f"{path}.kind", report)
    if kind is BAD:
        return None
    values = fields({**COMMON, **OWN[kind]}, required=REQUIRED.get(kind, ()))(raw, path, report)
    if values is BAD:
        return None
    return _checked(name, kind, values, raw, path, report)


def _checked(name: str, kind: str, values: dict[str, Any], raw: dict, path: str,
             report: Report) -> m.Guardrail | None:
    """Rules across the keys of one guardrail."""
    needed = NEEDS_ONE_OF.get(kind, ())
    if needed and not any(k in raw for k in needed):
        report.error(path, f"kind {kind} needs {' or '.join(repr(k) for k in needed)}")
    side = ONLY_ON.get(kind)
    if side is not None and any(stage != side for stage in values.get("on", (side,))):
        report.error(f"{path}.on", f"kind {kind} runs on {side} only (use on: [{side}])")
    if kind in NO_REDACT and values.get("action") == "redact":
        report.error(f"{path}.action", f"action 'redact' is not available for kind {kind} (use block or flag)")
    _check_stream(kind, values, raw, path, report)
    url = values.get("url")
    if url is not None and (urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc):
        report.error(f"{path}.url", f"invalid URL '{url}' (expected http://host... or https://host...)")
    if report.has_problem_under(path):
        return None
    values.pop("kind")
    on = values.pop("on", (side,) if side else ("pre",))
    if "stream" not in values and values.get("action") == "redact":
        values["stream"] = "hold"  # a streamed answer can only be redacted before it is sent
    return m.Guardrail(name=name, kind=kind, on=tuple(dict.fromkeys(on)), **values)  # type: ignore[arg-type]


def _check_stream(kind: str, values: dict[str, Any], raw: dict, path: str, report: Report) -> None:
    """A redaction must hold a streamed answer; window sizes only with ``stream: window``."""
    stream = values.get("stream")
    if values.get("action") == "redact" and stream in ("end", "window") and "post" in values.get("on", ()):
        why = "'end' checks the text after it was sent" if stream == "end" else \
            "'window' sends each window once checked, so a match across two windows could leak"
        report.error(f"{path}.stream", f"a redaction of a streamed answer needs stream: hold ({why}); "
                     "use stream: hold, or action: block with stream: window")
    if kind == "json_schema" and stream == "window":
        report.error(f"{path}.stream", "kind json_schema checks the whole answer (use stream: end or hold)")
    for key in ("window_chars", "window_overlap_chars"):
        if key in raw and stream != "window":
            report.error(f"{path}.{key}", f"{key} applies to stream: window only")
    size, overlap = values.get("window_chars", 1000), values.get("window_overlap_chars", 100)
    if stream == "window" and isinstance(size, int) and isinstance(overlap, int) and overlap >= size:
        report.error(f"{path}.window_overlap_chars", f"must be less than window_chars ({size}), got {overlap}")


NAMES = list_of(NAME)  # tenants.X.guardrails and models.X.guardrails


def check_guardrail_refs(data: dict[str, Any], declared: dict[str, Any], report: Report) -> None:
    """Every guardrail a tenant or a model lists is declared; a judge is a model with deployments."""
    known = f"known: {', '.join(declared) or 'none'}"
    models = data.get("models") if isinstance(data.get("models"), dict) else {}
    served = [n for n, raw in models.items() if isinstance(raw, dict) and "deployments" in raw]
    for name, guard in declared.items():
        if guard is not None and guard.kind == "llm_judge" and guard.model not in served:
            report.error(f"guardrails.{name}.model",
                         f"unknown model '{guard.model}' (a judge is a model with deployments; known: "
                         f"{', '.join(served) or 'none'})")
        elif guard is not None and guard.budget_usd is not None and "price" not in models[guard.model]:
            report.error(f"guardrails.{name}.budget_usd",
                         f"model '{guard.model}' has no price, so the judge's spend cannot be counted")
    for section in ("tenants", "models"):
        block = data.get(section)
        for owner, raw in block.items() if isinstance(block, dict) else ():
            names = raw.get("guardrails") if isinstance(raw, dict) else None
            for i, ref in enumerate(names if isinstance(names, list) else ()):
                if isinstance(ref, str) and ref not in declared:
                    report.error(f"{section}.{owner}.guardrails[{i}]", f"unknown guardrail '{ref}' ({known})")
