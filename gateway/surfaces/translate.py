"""What every translating surface shares: the dropped-features rule and rate-limit header names."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote

from gateway.errors import invalid
from gateway.surfaces.base import DROPPED_HEADER

if TYPE_CHECKING:
    from gateway.context import RequestContext


def apply_dropped(ctx: RequestContext, model: object, dropped: list[str]) -> None:
    """Name what could not be translated (header and access log), or refuse it (``on_untranslatable: error``)."""
    if not dropped:
        return
    spec = ctx.policy.models.get(model) if isinstance(model, str) else None
    if spec is not None and spec.on_untranslatable == "error":
        raise invalid(f"The model '{spec.name}' cannot be served this request as sent: it has features the "
                      f"deployment's API cannot express ({', '.join(dropped)}); the policy says "
                      "on_untranslatable: error.", param=dropped[0], code="untranslatable")
    ctx.dropped = tuple(dropped)
    # names can be a client's own field names: percent-encode all but [A-Za-z0-9_.-~], so a control
    # character or a comma in one can neither break the header (aiohttp refuses to send it) nor split it
    ctx.response_headers[DROPPED_HEADER] = ",".join(quote(name, safe="") for name in dropped)[:1024]
