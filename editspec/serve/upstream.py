"""Talking to the upstream API: forwarded headers, retries with backoff, clear errors.

A request is retried when the upstream refuses the connection, times out, drops it, or
answers 500, 502, 503 or 504; waits double from `backoff` seconds (capped at 8 s), or last as
long as the upstream's `Retry-After` asks; one asking more than 8 s is passed to the caller.  After
the last try the caller gets the upstream's own 5xx answer, or, when none came, an
OpenAI-style error: 502 `upstream_unreachable` or 504 `upstream_timeout`.  No try starts
or waits past the request's deadline.  Headers are forwarded as they came (Authorization
included) and never logged or kept.

>>> upstream = Upstream("http://127.0.0.1:8000/v1", retries=3)          # doctest: +SKIP
>>> response = await upstream.send("POST", "chat/completions", body, headers)  # doctest: +SKIP
"""
from __future__ import annotations

import asyncio
import math
import time
from typing import Callable

from editspec.serve.http import ApiError

RETRY_STATUSES = frozenset({500, 502, 503, 504})
# Hop-by-hop headers (RFC 9110 §7.6.1) and those the HTTP client sets itself.
_DROP = frozenset({"host", "content-length", "connection", "keep-alive", "transfer-encoding", "te", "trailer",
                   "upgrade", "proxy-authorization", "proxy-connection"})
_MAX_WAIT = 8.0


def _retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header given in seconds (an HTTP date is not waited for)."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def forwarded(headers) -> dict[str, str]:
    """The request headers to send upstream: everything but hop-by-hop ones."""
    return {k: v for k, v in headers.items() if k.lower() not in _DROP}


def returned(headers) -> dict[str, str]:
    """The upstream response headers to pass back (the body is re-streamed, so no length)."""
    return {k: v for k, v in headers.items() if k.lower() not in _DROP}


class Upstream:
    """An async HTTP client for one upstream base URL (e.g. `http://host:8000/v1`).

    `on_event(kind)` hears each retry (`retry`) and each failed try (`timeout`, `unreachable`,
    `status_5xx`), for the proxy's metrics.
    """

    def __init__(self, base_url: str, *, timeout: float = 120.0, retries: int = 3, backoff: float = 0.5,
                 connections: int = 128, on_event: Callable[[str], None] = lambda kind: None):
        import httpx2

        self.base_url = base_url.rstrip("/")
        self.timeout, self.retries, self.backoff, self.on_event = timeout, retries, backoff, on_event
        self.client = httpx2.AsyncClient(
            timeout=httpx2.Timeout(timeout, connect=min(timeout, 10.0)), trust_env=False,
            limits=httpx2.Limits(max_connections=connections, max_keepalive_connections=connections))

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def _wait(self, attempt: int) -> float:
        return min(self.backoff * 2 ** (attempt - 1), _MAX_WAIT)

    def _timeout_error(self, tries: int) -> ApiError:
        return ApiError(f"the upstream API at {self.base_url} timed out ({tries} tries)", status=504,
                        kind="upstream_error", code="upstream_timeout")

    async def send(self, method: str, path: str, content: bytes, headers: dict[str, str], params=None,
                   until: float = math.inf):
        """The upstream's response, opened for streaming (close it with `aclose()`).

        `until` is the request's deadline (`time.monotonic()`): tries and waits stay within it.
        """
        import httpx2

        problem, pause = None, 0.0
        for attempt in range(self.retries + 1):
            if attempt:
                self.on_event("retry")
                await asyncio.sleep(pause)
            left = until - time.monotonic()
            if left <= 0:
                raise problem or self._timeout_error(attempt)
            each = min(self.timeout, left)
            request = self.client.build_request(method, self.url(path), content=content, headers=headers,
                                                params=params, timeout=httpx2.Timeout(each, connect=min(each, 10.0)))
            try:
                response = await self.client.send(request, stream=True)
            except httpx2.TimeoutException:
                self.on_event("timeout")
                problem = self._timeout_error(attempt + 1)
            except httpx2.TransportError as error:
                self.on_event("unreachable")
                problem = ApiError(f"the upstream API at {self.base_url} could not be reached "
                                   f"({type(error).__name__}, {attempt + 1} tries)", status=502,
                                   kind="upstream_error", code="upstream_unreachable")
            else:
                if response.status_code not in RETRY_STATUSES:
                    return response
                self.on_event("status_5xx")
                asked = _retry_after(response.headers.get("retry-after"))
                if not self._may_retry(attempt, until, asked):
                    return response             # with its Retry-After, for the caller to honour
                await response.aclose()
                pause = max(asked or 0.0, self._wait(attempt + 1))
                continue
            if not self._may_retry(attempt, until):
                break
            pause = self._wait(attempt + 1)
        raise problem

    def _may_retry(self, attempt: int, until: float, asked: float | None = None) -> bool:
        """Another try fits: tries left, the wait (or the upstream's Retry-After) short enough and
        within the deadline."""
        if asked is not None and asked > _MAX_WAIT:
            return False
        wait = max(asked or 0.0, self._wait(attempt + 1))
        return attempt < self.retries and time.monotonic() + wait < until

    async def probe(self, seconds: float = 2.0) -> tuple[bool, dict]:
        """Whether the upstream answers `GET /models` at all (any status under 500), for `/healthz`."""
        import httpx2

        started = time.monotonic()
        try:
            response = await self.client.get(self.url("models"), timeout=seconds)
        except httpx2.HTTPError as error:
            return False, {"upstream": {"url": self.base_url, "error": type(error).__name__}}
        answer = {"url": self.base_url, "status": response.status_code,
                  "seconds": round(time.monotonic() - started, 4)}
        return response.status_code < 500, {"upstream": answer}

    async def aclose(self) -> None:
        await self.client.aclose()
