"""The console's view of a running worker: live member state and metrics over the worker's operator API.

Behind a small interface so the console does not care where the worker runs; ``HttpOperatorClient`` talks
HTTP to ``KAGOFLOW_OPERATOR_API_URL`` with ``Authorization: Bearer KAGOFLOW_OPERATOR_TOKEN`` when set. A worker
that is down gives ``None`` (the page says so) rather than an error page.
"""

from __future__ import annotations

from typing import Any, Protocol
from urllib.parse import quote

import aiohttp


class OperatorClient(Protocol):
    async def member(self, member_id: str) -> dict[str, Any] | None: ...

    async def metrics(self) -> dict[str, Any] | None: ...

    async def close(self) -> None: ...


class HttpOperatorClient:
    def __init__(self, base_url: str, *, token: str = "", timeout_s: float = 3.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def member(self, member_id: str) -> dict[str, Any] | None:
        return await self._get(f"/api/members/{quote(member_id, safe='')}")

    async def metrics(self) -> dict[str, Any] | None:
        return await self._get("/metrics")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _get(self, path: str) -> dict[str, Any] | None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
        try:
            async with self._session.get(self.base_url + path) as response:
                if response.status != 200:
                    return None
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        return body if isinstance(body, dict) else None
