"""AWS credentials and SigV4 signing for the Bedrock adapter, through botocore (the ``[aws]`` extra).

Credentials come from botocore's chain (environment, shared config/profile, web identity, container
and instance roles). Resolving them may read files or call a metadata endpoint, and refreshing
temporary ones calls STS: both run in a worker thread, never on the event loop. Temporary credentials
are refreshed ahead of expiry in the background while the current ones still sign; only credentials
about to expire make a request wait (for the thread, not by blocking the loop).

botocore is imported lazily so the gateway runs without it until a ``bedrock`` provider is used.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger("gateway.providers.aws")

ADVISORY_S = 15 * 60  # refresh in the background when this little validity remains
MANDATORY_S = 60  # ... and wait for the refresh when only this much remains


class AwsUnavailable(Exception):
    """botocore is missing, or the credential chain found nothing."""


def _botocore() -> Any:
    try:
        import botocore.session
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise AwsUnavailable("the bedrock provider needs botocore: pip install 'llm-gateway[aws]'") from exc
    return botocore


def config_region(profile: str | None) -> str | None:
    """The region botocore's configuration gives (AWS_REGION, AWS_DEFAULT_REGION, the profile)."""
    session = _botocore().session.Session(profile=profile or None)
    return session.get_config_variable("region")


class AwsCredentials:
    """The credential chain of one provider, resolved once and refreshed off the event loop."""

    def __init__(self, profile: str | None = None, resolve: Callable[[], Any] | None = None) -> None:
        self._profile = profile or None
        self._resolve_chain = resolve or self._chain
        self._source: Any = None  # botocore Credentials, possibly RefreshableCredentials
        self._frozen: Any = None  # ReadOnlyCredentials: what signs
        self._lock = asyncio.Lock()
        self._background: asyncio.Task[None] | None = None

    def _chain(self) -> Any:
        creds = _botocore().session.Session(profile=self._profile).get_credentials()
        if creds is None:
            where = f"profile '{self._profile}'" if self._profile else "the environment, config files or roles"
            raise AwsUnavailable(f"no AWS credentials found in {where}")
        return creds

    def _freeze(self) -> Any:
        """Runs in a thread: resolve the chain on first use, refresh when due, and freeze."""
        if self._source is None:
            self._source = self._resolve_chain()
        return self._source.get_frozen_credentials()

    def _expires_within(self, seconds: float) -> bool:
        refresh_needed = getattr(self._source, "refresh_needed", None)
        return bool(refresh_needed is not None and refresh_needed(seconds))

    async def get(self) -> Any:
        """Credentials valid for at least ``MANDATORY_S`` (``access_key``, ``secret_key``, ``token``)."""
        if self._frozen is not None and not self._expires_within(MANDATORY_S):
            if self._expires_within(ADVISORY_S) and self._background is None:
                self._background = asyncio.get_running_loop().create_task(self._refresh_ahead())
            return self._frozen
        async with self._lock:
            if self._frozen is None or self._expires_within(MANDATORY_S):
                self._frozen = await asyncio.to_thread(self._freeze)
        return self._frozen

    async def _refresh_ahead(self) -> None:
        try:
            async with self._lock:
                self._frozen = await asyncio.to_thread(self._freeze)
        except Exception as exc:  # noqa: BLE001 - the current credentials still sign; retried next request
            log.warning("refreshing AWS credentials failed: %s", type(exc).__name__)
        finally:
            self._background = None

    async def close(self) -> None:
        if self._background is not None:
            self._background.cancel()


def sign(credentials: Any, region: str, url: str, body: bytes, headers: Mapping[str, str],
         service: str = "bedrock") -> dict[str, str]:
    """``headers`` plus ``Authorization``/``X-Amz-Date`` (and the session token) for a POST of ``body``.

    ``url`` must be exactly what goes on the wire (path already percent-encoded): botocore signs its
    canonical form, and the sender must not re-encode it.
    """
    _botocore()
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    request = AWSRequest(method="POST", url=url, data=body, headers=dict(headers))
    SigV4Auth(credentials, service, region).add_auth(request)
    return dict(request.headers.items())
