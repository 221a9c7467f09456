"""A cheap, explainable complexity score in [0, 1] for ``score_over`` routing rules.

No model, no tokenizer: a handful of text heuristics that correlate with "a small model will
struggle", each capped so no single signal decides alone. The score is the sum of:

* length (up to 0.30): characters of the user's text, saturating at 6,000 (~1,500 tokens);
* code (up to 0.20): fenced code blocks (```), 0.10 each;
* questions (up to 0.15): question marks, 0.05 each (several questions = several sub-tasks);
* reasoning keywords (up to 0.25): words such as "prove", "step by step", "analyze",
  "trade-off", "debug", "optimize", 0.0625 each distinct hit (in the first 8,000 characters);
* structure (up to 0.10): numbered or bulleted lines asking for several things, 0.025 each.

So a one-line chat question scores about 0.05; a pasted stack trace with "why does this fail?"
about 0.4; a multi-part design question with code well above 0.6. ``score_over: 0.5`` is a sensible
start; shadow mode (``route.mode: shadow``) shows how a threshold would route real traffic first.
Only user messages count: a long system prompt says nothing about this request's difficulty.
"""

from __future__ import annotations

import re
from typing import Any

LENGTH_WEIGHT, LENGTH_SATURATION = 0.30, 6000
CODE_WEIGHT, CODE_EACH = 0.20, 0.10
QUESTION_WEIGHT, QUESTION_EACH = 0.15, 0.05
KEYWORD_WEIGHT, KEYWORD_EACH = 0.25, 0.0625
STRUCTURE_WEIGHT, STRUCTURE_EACH = 0.10, 0.025

KEYWORDS = frozenset({
    "prove", "proof", "derive", "analyze", "analyse", "analysis", "reason", "reasoning", "compare", "tradeoff",
    "tradeoffs", "trade-off", "trade-offs", "evaluate", "optimize", "optimise", "debug", "refactor",
    "architecture", "design", "algorithm", "complexity", "theorem", "calculate", "strategy",
})
PHRASES = ("step by step", "step-by-step", "explain why", "root cause")
SCAN_CHARS = 8000  # keywords and list items are looked for in the first 8,000 characters only
_PUNCTUATION = str.maketrans({c: " " for c in "!\"#$%&'()*+,./:;<=>?@[\\]^_`{|}~\n\t\r"})
LIST_ITEM = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+\S", re.MULTILINE)


def keyword_hits(text: str) -> int:
    """Distinct reasoning keywords and phrases in ``text`` (lower-cased words, not a regex: it is hot)."""
    lower = text[:SCAN_CHARS].lower()
    words = set(lower.translate(_PUNCTUATION).split())
    return len(words & KEYWORDS) + sum(1 for p in PHRASES if p in lower)


def user_text(body: dict[str, Any]) -> str:
    """The text of every user message (text parts of multimodal content included)."""
    parts: list[str] = []
    for msg in body.get("messages") or ():
        if not isinstance(msg, dict) or msg.get("role") != "user":
            continue
        parts.append(content_text(msg.get("content")))
    if not parts and isinstance(body.get("prompt"), str):
        parts.append(body["prompt"])
    return "\n".join(parts)


def content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def complexity_score(text: str) -> float:
    """The documented heuristic score of ``text``, rounded to 3 decimals."""
    if not text:
        return 0.0
    length = LENGTH_WEIGHT * min(1.0, len(text) / LENGTH_SATURATION)
    code = min(CODE_WEIGHT, CODE_EACH * (text.count("```") // 2))
    questions = min(QUESTION_WEIGHT, QUESTION_EACH * text.count("?"))
    keywords = min(KEYWORD_WEIGHT, KEYWORD_EACH * keyword_hits(text))
    structure = min(STRUCTURE_WEIGHT, STRUCTURE_EACH * len(LIST_ITEM.findall(text, 0, SCAN_CHARS)))
    return round(min(1.0, length + code + questions + keywords + structure), 3)
