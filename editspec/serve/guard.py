"""Limits that keep one request from taking a server down: body size, turns, waiting, time.

Both servers (`editspec serve-model`, `editspec serve`) wrap their app in a `Guard`, the
outermost ASGI layer, which refuses early with OpenAI-style JSON errors:

- a body over `max_body_bytes` gets 413 — on its `Content-Length` before a byte is read, or
  as the bytes of a chunked body arrive.  The body is never held: what the client still sends
  is read and thrown away (up to `DRAIN_BYTES` / `DRAIN_SECONDS`), so it reads the 413 instead
  of a connection reset halfway through its upload;
- `/v1/` requests take turns: `max_concurrent` at once, `max_waiting` more in line, and past
  that 503 with `Retry-After` (estimated from recent answer times);
- each `/v1/` request has `request_timeout` seconds in all, waiting included.  The apps stop
  their own work at `deadline(request)` (a stream ends with an error event); the guard cuts
  whatever is left a second later, answering 504 when nothing was sent yet;
- while the server loads or drains (`ServerState`), `/v1/` answers 503 with `Retry-After`.

>>> app = Guard(starlette_app, ServeLimits(), ServerMetrics("editspec_model"), ServerState())  # doctest: +SKIP
"""
from __future__ import annotations

import asyncio
import contextlib
import math
import time

from pydantic import BaseModel, ConfigDict, Field

from editspec.serve.http import ApiError, error_response

DRAIN_BYTES = 64 << 20
DRAIN_SECONDS = 10.0
_GRACE = 1.0          # seconds the guard leaves the app to end a request cleanly at its deadline
ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/healthz", "/metrics")


class ServeLimits(BaseModel):
    """What one server accepts; each field is also a command-line flag (`--max-body-bytes`, ...)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_body_bytes: int = Field(
        1 << 20, gt=0, description="Largest request body in bytes (suffixes KiB, MiB); a larger one is refused "
        "with 413 before it is read.")
    max_concurrent: int = Field(
        1, ge=1, description="Requests worked on at once; the others wait for a turn.")
    max_waiting: int = Field(
        64, ge=0, description="Requests that may wait for a turn; past that, 503 with Retry-After.")
    request_timeout: float = Field(
        300.0, gt=0, description="Seconds one request may take in all, waiting and streaming included; past it "
        "504, or a stream ends with an error event.")
    shutdown_timeout: float = Field(
        30.0, ge=0, description="Seconds SIGTERM waits for requests in flight to finish before cutting them.")

    def summary(self) -> str:
        """One line for the start-up banner."""
        return (f"body <= {format_bytes(self.max_body_bytes)}, {self.max_concurrent} at once, "
                f"{self.max_waiting} waiting, {self.request_timeout:g} s per request, "
                f"{self.shutdown_timeout:g} s to drain on SIGTERM")


class ModelLimits(ServeLimits):
    """The guard's limits plus the model server's own, on prompt and completion length."""

    max_prompt_tokens: int | None = Field(
        None, gt=0, description="Longest prompt in tokens (default: the model's context); a longer one is "
        "refused with 400 before it is tokenised whole.")
    max_completion_tokens: int = Field(
        1024, gt=0, description="Most tokens one request may generate; a larger max_tokens is refused with 400.")

    def summary(self) -> str:
        prompts = f"{self.max_prompt_tokens} tokens" if self.max_prompt_tokens else "the model's context"
        return f"{super().summary()}, prompts <= {prompts}, max_tokens <= {self.max_completion_tokens}"


class ProxyLimits(ServeLimits):
    """The guard's limits with a proxy's defaults (many requests at once, bigger bodies), and a cap."""

    max_body_bytes: int = Field(8 << 20, gt=0, description=ServeLimits.model_fields["max_body_bytes"].description)
    max_concurrent: int = Field(128, ge=1, description=ServeLimits.model_fields["max_concurrent"].description)
    max_waiting: int = Field(512, ge=0, description=ServeLimits.model_fields["max_waiting"].description)
    request_timeout: float = Field(600.0, gt=0, description=ServeLimits.model_fields["request_timeout"].description)
    max_completion_tokens: int | None = Field(
        None, gt=0, description="Most tokens a request may ask the upstream for (max_tokens); more is refused "
        "with 400 before it is forwarded.  Default: the upstream's own limit.")

    def summary(self) -> str:
        cap = self.max_completion_tokens
        return super().summary() + (f", max_tokens <= {cap}" if cap else "")


def format_bytes(count: int) -> str:
    """`1048576` as `1 MiB`, `1536` as `1.5 KiB`."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size:
            return f"{count / size:g} {unit}"
    return f"{count} B"


def deadline(request) -> float:
    """The `time.monotonic()` by which the guard wants `request` answered (inf outside a guard)."""
    return request.scope.get("state", {}).get("deadline", math.inf)


def timed_out(limits_seconds: float) -> ApiError:
    return ApiError(f"the request ran past this server's {limits_seconds:g} s limit", status=504,
                    kind="timeout_error", code="request_timeout")


class Admission:
    """Turns for requests: `concurrent` at once, `waiting` in line, the rest refused."""

    def __init__(self, concurrent: int, waiting: int):
        self.concurrent, self.max_waiting = concurrent, waiting
        self.active = self.waiting = 0
        self._turns: asyncio.Semaphore | None = None        # made inside the server's event loop
        self._seconds = 1.0                                  # recent seconds per answer, for Retry-After

    def retry_after(self) -> int:
        """Seconds until a turn is likely free: the line ahead times the recent answer time."""
        ahead = (self.waiting + self.active) / self.concurrent
        return max(1, min(60, math.ceil(self._seconds * ahead)))

    def busy(self, message: str) -> ApiError:
        return ApiError(message, status=503, kind="server_error", code="server_overloaded",
                        headers={"Retry-After": str(self.retry_after())})

    async def enter(self, seconds: float) -> None:
        """Wait at most `seconds` for a turn; `ApiError` 503 when the line is full or the wait too long."""
        if self._turns is None:
            self._turns = asyncio.Semaphore(self.concurrent)
        if self._turns.locked() and self.waiting >= self.max_waiting:
            raise self.busy(f"the server is busy ({self.active} requests running, {self.waiting} waiting); "
                            "retry later")
        self.waiting += 1
        try:
            async with asyncio.timeout(max(seconds, 0.0)):
                await self._turns.acquire()
        except TimeoutError:
            raise self.busy(f"no turn came within the request's {seconds:.0f} s; retry later") from None
        finally:
            self.waiting -= 1
        self.active += 1

    def leave(self, seconds: float) -> None:
        self.active -= 1
        self._turns.release()
        self._seconds = 0.8 * self._seconds + 0.2 * seconds


class _Body:
    """The request's `receive`, counting body bytes and refusing past the limit."""

    def __init__(self, receive, limit: int, on_refusal):
        self._receive, self.limit, self.on_refusal = receive, limit, on_refusal
        self.seen, self.done = 0, False

    async def receive(self):
        message = await self._receive()
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            self.done = not message.get("more_body", False)
            if self.seen > self.limit:
                await self.discard()
                self.on_refusal("body_too_large")
                raise too_large(self.limit)
        else:
            self.done = True
        return message

    async def discard(self) -> None:
        """Read and drop the rest of the body, within `DRAIN_BYTES` and `DRAIN_SECONDS`."""
        dropped, stop = 0, time.monotonic() + DRAIN_SECONDS
        try:
            while not self.done and dropped < DRAIN_BYTES:
                async with asyncio.timeout(max(stop - time.monotonic(), 0.0)):
                    message = await self._receive()
                dropped += len(message.get("body", b""))
                self.done = message["type"] != "http.request" or not message.get("more_body", False)
        except TimeoutError:
            pass


def too_large(limit: int) -> ApiError:
    return ApiError(f"the request body is larger than this server's limit of {format_bytes(limit)}",
                    status=413, code="request_too_large")


def route_label(path: str) -> str:
    """The metrics label for a path: a known route, else `other` (so labels stay few)."""
    return path if path in ROUTES else "other"


class Guard:
    """The ASGI app that applies `limits` in front of `app`, counting into `metrics`."""

    def __init__(self, app, limits: ServeLimits, metrics, state):
        self.app, self.limits, self.metrics, self.state = app, limits, metrics, state
        self.admission = Admission(limits.max_concurrent, limits.max_waiting)
        state.in_flight = lambda: self.admission.active + self.admission.waiting
        metrics.watch(self.admission, state)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.monotonic(), []

        async def tracked(message):
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        try:
            await self._guarded(scope, receive, tracked, started, status)
        finally:
            route = route_label(scope["path"])
            # 499: the client went away before any answer (nginx's convention).
            self.metrics.requests.inc(route=route, status=str(status[0] if status else 499))
            self.metrics.latency.observe(time.monotonic() - started, route=route)

    def _refused(self, reason: str) -> None:
        self.metrics.refused.inc(reason=reason)

    async def _guarded(self, scope, receive, send, started: float, status: list) -> None:
        body = _Body(receive, self.limits.max_body_bytes, self._refused)
        declared = _content_length(scope)
        if declared is not None and declared > self.limits.max_body_bytes:
            await body.discard()
            self._refused("body_too_large")
            return await _answer(scope, receive, send, too_large(self.limits.max_body_bytes))
        if not scope["path"].startswith("/v1/"):
            return await self.app(scope, body.receive, send)
        if not self.state.accepting():
            await body.discard()
            self._refused(self.state.status)
            return await _answer(scope, receive, send, self.state.refusal())
        limit = self.limits.request_timeout
        scope.setdefault("state", {})["deadline"] = started + limit
        try:
            await self.admission.enter(started + limit - time.monotonic())
        except ApiError as error:
            await body.discard()
            self._refused("busy")
            return await _answer(scope, receive, send, error)
        try:
            async with asyncio.timeout(started + limit + _GRACE - time.monotonic()):
                await self.app(scope, body.receive, send)
        except TimeoutError:
            self._refused("timeout")
            if not status:
                await _answer(scope, receive, send, timed_out(limit))
        except asyncio.CancelledError:
            # Shutdown cut the request (past --shutdown-timeout): say so while the caller listens.
            if not status and self.state.status == "draining":
                self._refused("draining")
                with contextlib.suppress(Exception):
                    await _answer(scope, receive, send, self.state.refusal())
            raise
        finally:
            self.admission.leave(time.monotonic() - started)


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _answer(scope, receive, send, error: ApiError) -> None:
    await error_response(error)(scope, receive, send)
