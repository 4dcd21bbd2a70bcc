"""Talking to the upstream API: forwarded headers, retries with backoff, clear errors.

A request is retried when the upstream refuses the connection, times out, drops it, or
answers 500, 502, 503 or 504; waits double from `backoff` seconds (capped at 8 s), or last as
long as the upstream's `Retry-After` asks; one asking more than 8 s is passed to the caller.  After
the last try the caller gets the upstream's own 5xx answer, or, when none came, an
OpenAI-style error: 502 `upstream_unreachable` or 504 `upstream_timeout`.  No try starts
or waits past the request's deadline.  Headers are forwarded as they came (Authorization
included) and never logged or kept; the client (aiohttp, see `Upstream`) adds none of its own.

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


def failure_kind(error: BaseException) -> str:
    """A transport failure's kind as `/healthz` and the error messages name it: `ConnectError`,
    `ConnectTimeout`, `ReadTimeout`, `RemoteProtocolError` (the names these had with httpx,
    kept so that operators' alerts and logs read the same), else the exception's type."""
    import aiohttp

    if isinstance(error, aiohttp.ConnectionTimeoutError):
        return "ConnectTimeout"
    if isinstance(error, asyncio.TimeoutError):
        return "ReadTimeout"
    if isinstance(error, aiohttp.ClientConnectorError):
        return "ConnectError"
    if isinstance(error, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError)):
        return "RemoteProtocolError"
    return type(error).__name__


class UpstreamDropped(Exception):
    """The upstream's connection broke (or stalled past the timeout) while its body was read."""


class UpstreamResponse:
    """An upstream answer, opened for streaming: `status_code`, `headers`, then `chunks()`.

    Close it with `aclose()` (its connection goes back to the pool once the body was read
    whole; a half-read one is closed).
    """

    def __init__(self, raw):
        self._raw = raw
        self.status_code: int = raw.status
        self.headers = raw.headers

    async def chunks(self):
        """The body's bytes as they arrive, as the upstream encoded them; `UpstreamDropped`
        when the connection breaks or a read stalls past the timeout."""
        import aiohttp

        try:
            async for chunk in self._raw.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            raise UpstreamDropped(failure_kind(error)) from error

    async def aclose(self) -> None:
        self._raw.release()


class Upstream:
    """An async HTTP client for one upstream base URL (e.g. `http://host:8000/v1`).

    `on_event(kind)` hears each retry (`retry`) and each failed try (`timeout`, `unreachable`,
    `status_5xx`), for the proxy's metrics.  Up to `connections` requests are open upstream at
    once, on kept-alive connections.

    aiohttp rather than httpx: its pool hands out a connection in constant time, where httpx's
    scans every pooled connection for each request, so the proxy's CPU per request grew with
    the concurrency (1.3-2.1 ms a request at 200 clients against aiohttp's 0.2-0.4 ms; see
    docs/benchmarks.md, serving).  It only relays bytes: it adds no headers of its own
    (no `Accept-Encoding`, `User-Agent` or `Content-Type`) and never decompresses a body.
    """

    # What aiohttp would add to a request the caller did not send itself.
    _NOT_ADDED = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")

    def __init__(self, base_url: str, *, timeout: float = 120.0, retries: int = 3, backoff: float = 0.5,
                 connections: int = 128, on_event: Callable[[str], None] = lambda kind: None):
        self.base_url = base_url.rstrip("/")
        self.timeout, self.retries, self.backoff, self.on_event = timeout, retries, backoff, on_event
        self.connections = connections
        self._session = None                     # made in the server's event loop, on first use

    def session(self):
        import aiohttp

        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self.connections, limit_per_host=0)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False, trust_env=False,
                                                  skip_auto_headers=self._NOT_ADDED)
        return self._session

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def _wait(self, attempt: int) -> float:
        return min(self.backoff * 2 ** (attempt - 1), _MAX_WAIT)

    def _timeout_error(self, tries: int) -> ApiError:
        return ApiError(f"the upstream API at {self.base_url} timed out ({tries} tries)", status=504,
                        kind="upstream_error", code="upstream_timeout")

    async def send(self, method: str, path: str, content: bytes, headers: dict[str, str], params=None,
                   until: float = math.inf) -> UpstreamResponse:
        """The upstream's response, opened for streaming (close it with `aclose()`).

        `until` is the request's deadline (`time.monotonic()`): tries and waits stay within it.
        `params`: the query string's items (a mapping, or Starlette's `QueryParams`).
        """
        import aiohttp

        query = list(params.multi_items()) if hasattr(params, "multi_items") else params
        problem, pause = None, 0.0
        for attempt in range(self.retries + 1):
            if attempt:
                self.on_event("retry")
                await asyncio.sleep(pause)
            left = until - time.monotonic()
            if left <= 0:
                raise problem or self._timeout_error(attempt)
            each = min(self.timeout, left)
            # `each` bounds connecting, the wait for the answer's head, and each read of its body.
            limit = aiohttp.ClientTimeout(total=None, sock_connect=min(each, 10.0), sock_read=each)
            try:
                raw = await self.session().request(method, self.url(path), data=content or None, headers=headers,
                                                   params=query or None, timeout=limit, allow_redirects=False)
            except asyncio.TimeoutError:
                self.on_event("timeout")
                problem = self._timeout_error(attempt + 1)
            except aiohttp.ClientError as error:
                self.on_event("unreachable")
                problem = ApiError(f"the upstream API at {self.base_url} could not be reached "
                                   f"({failure_kind(error)}, {attempt + 1} tries)", status=502,
                                   kind="upstream_error", code="upstream_unreachable")
            else:
                response = UpstreamResponse(raw)
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
        import aiohttp

        started = time.monotonic()
        try:
            async with self.session().get(self.url("models"), timeout=aiohttp.ClientTimeout(total=seconds)) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            return False, {"upstream": {"url": self.base_url, "error": failure_kind(error)}}
        answer = {"url": self.base_url, "status": status, "seconds": round(time.monotonic() - started, 4)}
        return status < 500, {"upstream": answer}

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
