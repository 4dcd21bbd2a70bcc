"""Talking to the upstream API: forwarded headers, retries with backoff, clear errors.

A request is retried when the upstream refuses the connection, times out, drops it, or
answers 500, 502, 503 or 504; waits double from `backoff` seconds (capped at 8 s).  After
the last try the caller gets the upstream's own 5xx answer, or, when none came, an
OpenAI-style error: 502 `upstream_unreachable` or 504 `upstream_timeout`.  Headers are
forwarded as they came (Authorization included) and never logged or kept.

>>> upstream = Upstream("http://127.0.0.1:8000/v1", retries=3)          # doctest: +SKIP
>>> response = await upstream.send("POST", "chat/completions", body, headers)  # doctest: +SKIP
"""
from __future__ import annotations

import asyncio

from editspec.blackbox.http import ApiError

RETRY_STATUSES = frozenset({500, 502, 503, 504})
# Hop-by-hop headers (RFC 9110 §7.6.1) and those the HTTP client sets itself.
_DROP = frozenset({"host", "content-length", "connection", "keep-alive", "transfer-encoding", "te", "trailer",
                   "upgrade", "proxy-authorization", "proxy-connection"})
_MAX_WAIT = 8.0


def forwarded(headers) -> dict[str, str]:
    """The request headers to send upstream: everything but hop-by-hop ones."""
    return {k: v for k, v in headers.items() if k.lower() not in _DROP}


def returned(headers) -> dict[str, str]:
    """The upstream response headers to pass back (the body is re-streamed, so no length)."""
    return {k: v for k, v in headers.items() if k.lower() not in _DROP}


class Upstream:
    """An async HTTP client for one upstream base URL (e.g. `http://host:8000/v1`)."""

    def __init__(self, base_url: str, *, timeout: float = 120.0, retries: int = 3, backoff: float = 0.5,
                 connections: int = 128):
        import httpx2

        self.base_url = base_url.rstrip("/")
        self.retries, self.backoff = retries, backoff
        self.client = httpx2.AsyncClient(
            timeout=httpx2.Timeout(timeout, connect=min(timeout, 10.0)), trust_env=False,
            limits=httpx2.Limits(max_connections=connections, max_keepalive_connections=connections))

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    async def send(self, method: str, path: str, content: bytes, headers: dict[str, str], params=None):
        """The upstream's response, opened for streaming (close it with `aclose()`)."""
        import httpx2

        problem = None
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(min(self.backoff * 2 ** (attempt - 1), _MAX_WAIT))
            request = self.client.build_request(method, self.url(path), content=content, headers=headers,
                                                params=params)
            try:
                response = await self.client.send(request, stream=True)
            except httpx2.TimeoutException:
                problem = ApiError(f"the upstream API at {self.base_url} timed out ({attempt + 1} tries)",
                                   status=504, kind="upstream_error", code="upstream_timeout")
                continue
            except httpx2.TransportError as error:
                reason = type(error).__name__
                problem = ApiError(f"the upstream API at {self.base_url} could not be reached ({reason}, "
                                   f"{attempt + 1} tries)", status=502, kind="upstream_error",
                                   code="upstream_unreachable")
                continue
            if response.status_code in RETRY_STATUSES and attempt < self.retries:
                await response.aclose()
                continue
            return response
        raise problem

    async def aclose(self) -> None:
        await self.client.aclose()
