"""Azure OpenAI: the OpenAI wire format behind per-deployment URLs and an ``api-key`` header.

Azure picks the model from the URL (the deployment name), not from the body, and versions the API
with a required ``api-version`` query parameter. Everything else (bodies, SSE, errors) is the OpenAI
format, so only the ``url``/``auth_headers``/``encode`` hooks of ``OpenAIProvider`` change.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

import orjson

from gateway.errors import invalid
from gateway.policy.checkers import string
from gateway.policy.model import ProviderSpec
from gateway.providers.base import UpstreamRequest, UpstreamResponse, local_error
from gateway.providers.openai import PATHS, OpenAIProvider

DEFAULT_API_VERSION = "2024-10-21"  # the current GA data-plane version


@dataclass(frozen=True, slots=True)
class AzureOptions:
    api_version: str = DEFAULT_API_VERSION


OPTION_KEYS = {"api_version": string()}


class AzureOpenAIProvider(OpenAIProvider):
    type = "azure_openai"

    def __init__(self, spec: ProviderSpec) -> None:
        super().__init__(spec)
        # Accept both ``https://x.openai.azure.com`` and a base that already ends in ``/openai``.
        if self._base.endswith("/openai"):
            self._base = self._base[: -len("/openai")]
        options = spec.options if isinstance(spec.options, AzureOptions) else AzureOptions()
        self._version = quote(options.api_version or DEFAULT_API_VERSION, safe="")

    def key_headers(self) -> dict[str, str]:
        """Azure keys go in ``api-key``; a Bearer header would be read as an Entra ID token."""
        key = self.key.current()
        return {"api-key": key} if key else {}

    def url(self, req: UpstreamRequest) -> str:
        deployment = quote(str(req.body.get("model") or ""), safe="")
        return (
            f"{self._base}/openai/deployments/{deployment}{PATHS[req.endpoint]}?api-version={self._version}"
        )

    def encode(self, req: UpstreamRequest) -> bytes:
        """The deployment already names the model; drop ``model`` so Azure can't disagree with it."""
        return orjson.dumps({k: v for k, v in req.body.items() if k != "model"})

    async def send(self, req: UpstreamRequest) -> UpstreamResponse:
        if not req.body.get("model"):
            err = invalid(f"{self.name}: no deployment name (the request has no model)", param="model")
            return local_error(err)
        return await super().send(req)
