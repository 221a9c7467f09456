"""Gemini on Google Cloud Vertex AI: the Gemini API behind project/location URLs and OAuth2 tokens.

``POST {base}/v1/projects/{project}/locations/{location}/publishers/google/models/{model}:generateContent``
(and ``:streamGenerateContent?alt=sse``); embeddings use the text-embedding ``:predict`` method, which
reports token counts. The base URL defaults to ``https://{location}-aiplatform.googleapis.com``
(``https://aiplatform.googleapis.com`` for ``global``). The bearer token comes from ``google_auth``'s
background refresher: a request reads the cached token and never waits for a refresh.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.errors import UpstreamError
from gateway.policy.checkers import string
from gateway.policy.model import ProviderSpec
from gateway.providers import gemini_answer as answers
from gateway.providers.gemini import GeminiProvider, VectorReader
from gateway.providers.gemini_translate import predict_embed_request
from gateway.providers.google_auth import TokenSource


@dataclass(frozen=True, slots=True)
class VertexOptions:
    project: str = ""  # empty: the credentials' own project
    location: str = "us-central1"
    credentials_file: str = ""  # empty: google-auth's default chain (env, gcloud, metadata server)


OPTION_KEYS = {"project": string(), "location": string(nonempty=True), "credentials_file": string()}


def default_base_url(location: str) -> str:
    host = "aiplatform.googleapis.com" if location == "global" else f"{location}-aiplatform.googleapis.com"
    return f"https://{host}"


class VertexProvider(GeminiProvider):
    type = "vertex"

    def __init__(self, spec: ProviderSpec, clock: Clock = SYSTEM_CLOCK, tokens: TokenSource | None = None) -> None:
        super().__init__(spec, clock)
        self.options = spec.options if isinstance(spec.options, VertexOptions) else VertexOptions()
        self._base = (spec.base_url or default_base_url(self.options.location)).rstrip("/")
        self.tokens = tokens or TokenSource(self.options.credentials_file, name=spec.name)

    async def start(self) -> None:
        """Fetch the first token as soon as the provider starts (it is also started by the first call)."""
        await super().start()
        self.tokens.start()

    async def close(self) -> None:
        await self.tokens.close()
        await super().close()

    def key_headers(self) -> dict[str, str]:
        return {}  # Vertex authenticates with the token only

    async def auth_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {await self.tokens.token()}"}

    async def model_url(self, model: str, method: str) -> str:
        project = self.options.project or self.tokens.project
        if not project:
            await self.tokens.token()  # the first fetch loads the credentials and their project
            project = self.tokens.project
        if not project:
            raise UpstreamError("connect", f"{self.name}: no project (set providers.{self.name}.project)")
        location = quote(self.options.location, safe="")
        return (f"{self._base}/v1/projects/{quote(project, safe='')}/locations/{location}"
                f"/publishers/google/models/{quote(model, safe='')}:{method}")

    async def embed_call(self, body: dict[str, Any], model: str) -> tuple[str, dict[str, Any], VectorReader]:
        return await self.model_url(model, "predict"), predict_embed_request(body), answers.predict_vectors
