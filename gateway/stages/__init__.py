"""The stage list: the order of stages within each pipeline phase.

Adding a capability means adding its stage here; the runner (``gateway.pipeline``) never changes.
Order matters within a phase and for ``on_response`` filters: each filter wraps the stream the
earlier ones produced, so a stage that must see the upstream stream untouched (the cache keeps the
usage chunk) comes before ``UsageStage``, which strips the usage chunk the client did not ask for.
"""

from __future__ import annotations

from gateway.pipeline import Stage
from gateway.services import Services
from gateway.stages.auth import AuthStage
from gateway.stages.input_check import InputStage
from gateway.stages.upstream import UpstreamStage
from gateway.stages.usage import UsageStage


def build_stages(services: Services) -> list[Stage]:
    return [
        AuthStage(),
        InputStage(),
        UsageStage(),
        UpstreamStage(services.providers),
    ]
