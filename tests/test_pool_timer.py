"""The attempt's one deadline while a new upstream connection is opened (``PoolTimer.connecting``).

The attempt's timeout opens without a deadline (a free pooled connection then sets it once); a
connection that has to be opened, and never opens, must still be cut at ``connect_s + first_byte_s``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from gateway.errors import UpstreamError
from gateway.policy.model import ProviderSpec, Timeouts
from gateway.providers.base import UpstreamRequest
from gateway.providers.openai import OpenAIProvider


async def test_a_connection_that_never_opens_is_cut_at_connect_plus_first_byte(monkeypatch) -> None:
    async def never(_self: Any, _req: Any, _traces: Any, _timeout: Any) -> Any:
        await asyncio.Event().wait()

    monkeypatch.setattr(aiohttp.TCPConnector, "_create_connection", never)
    spec = ProviderSpec(name="slow", type="openai", base_url="http://127.0.0.1:9/v1",
                        timeouts=Timeouts(connect_s=0.05, first_byte_s=0.05, total_s=5.0))
    provider = OpenAIProvider(spec)
    req = UpstreamRequest(endpoint="chat", body={"model": "m", "messages": []}, stream=False, request_id="r-1")
    try:
        with pytest.raises(UpstreamError) as info:
            await asyncio.wait_for(provider.send(req), 10)  # only so a missing deadline fails instead of hanging
        assert info.value.kind == "timeout"
        assert info.value.message == "no response from slow within 0.05s"
    finally:
        await provider.close()
