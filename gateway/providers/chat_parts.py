"""Reading the OpenAI chat form: what every translating provider needs from a message's content."""

from __future__ import annotations

from typing import Any

from gateway.errors import invalid


def text_parts(content: Any, param: str) -> list[str]:
    """Plain text of a string or a list of text parts (system prompts, tool results); a 400 otherwise."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") not in ("text", "refusal"):
                raise invalid("only text parts are allowed here", param=f"{param}[{j}]")
            texts.append(str(part.get("text") or part.get("refusal") or ""))
        return texts
    raise invalid("content must be a string or a list of parts", param=param)
