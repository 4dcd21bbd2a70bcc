"""`editspec serve`: an OpenAI-compatible proxy that applies a black-box plugin to each request.

`POST /v1/chat/completions` and `/v1/completions` are routed through the plugin: when an edit
applies, the request's last user message (or prompt) is rewritten and re-serialised;
otherwise the request's bytes go upstream exactly as they came.  Every other `/v1/...`
request (`GET /v1/models`, ...) is forwarded unchanged.  Responses, streamed ones included,
come back as the upstream sent them, with `x-editspec-edits` naming the edits applied: a
`stream: true` request an edit applies to is streamed by the upstream as it was asked
(server-sent events, the usage chunk when `stream_options.include_usage` asks for it).
The caller's Authorization header is forwarded and never logged or stored.  An answer that
is not an event stream and has a known length under 1 MiB is read whole before it is passed
on, so an upstream that breaks off in the middle of it is a clean 502 (`upstream_dropped`).

Only a request an edit could apply to is embedded (`Plugin.may_apply`); those arriving
together are embedded in one batch (`Batcher`), in a worker thread.  Small bodies are
parsed on the event loop, larger ones in a thread.

The proxy's own guard (`ProxyLimits`) refuses before anything is embedded or forwarded: a
body over the limit (413), a line of waiting requests too long (503 with Retry-After), a
`max_tokens` over `max_completion_tokens` when one is set (400); each request has a
deadline, retries included.  `GET /healthz` is 200 only when the plugin is loaded and the
upstream answers; `GET /metrics` counts requests, edits applied and upstream trouble.

>>> app = create_proxy_app(load_plugin("build/leadership.retrieval"), "http://127.0.0.1:8000/v1")  # doctest: +SKIP
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time

from editspec.serve.guard import Guard, ProxyLimits, deadline, timed_out
from editspec.serve.http import EXCEPTION_HANDLERS, ApiError, parse_json, sse
from editspec.serve.runtime import ServerState, ops_routes
from editspec.serve.telemetry import ServerMetrics
from editspec.serve.upstream import Upstream, UpstreamDropped, forwarded, returned

EDITS_HEADER = "x-editspec-edits"
_ROUTED = {"chat/completions": "rewrite_chat", "completions": "rewrite_completion"}
_PROBE_SECONDS = 1.0      # /healthz asks the upstream at most once a second
_INLINE_BYTES = 64 << 10  # bodies up to this are parsed on the event loop (about 0.1 ms)
_WHOLE_BYTES = 1 << 20    # answers up to this (not streamed, of known length) are read whole


def check_budget(body: dict, cap: int | None) -> None:
    """Refuse a request asking for more than `cap` completion tokens (none: no cap)."""
    for key in ("max_tokens", "max_completion_tokens"):
        asked = body.get(key)
        if cap is not None and isinstance(asked, int) and asked > cap:
            raise ApiError(f"{key} is too large: {asked}; this proxy allows at most {cap}", param=key)


def routed_body(path: str, raw: bytes, cap: int | None) -> dict | None:
    """The JSON body of a request the plugin routes (None: not routed, or malformed — the
    upstream answers malformed requests itself); `ApiError` when it asks for over `cap` tokens."""
    if path not in _ROUTED:
        return None
    try:
        body = parse_json(raw)
    except ApiError:
        return None
    check_budget(body, cap)
    return body


def plan(plugin, path: str, raw: bytes, cap: int | None) -> tuple[dict | None, str | None, bool]:
    """What a request needs: its routed body (`routed_body`), the one text it is routed by
    (`Plugin.routed_text`; None when it has none, e.g. a list of prompts), and whether that
    text must be embedded (False when no edit could apply to it: `Plugin.may_apply`)."""
    body = routed_body(path, raw, cap)
    if body is None:
        return None, None, False
    text = plugin.routed_text(body, chat=path == "chat/completions")
    return body, text, text is not None and plugin.may_apply(text)


def rewrite(plugin, path: str, body: dict, raw: bytes, vectors=None) -> tuple[bytes, list[str]]:
    """The bytes to send upstream for a routed request, and the edit ids applied (none: `raw`)."""
    changed = getattr(plugin, _ROUTED[path])(body, vectors)
    if changed is None:
        return raw, []
    new_body, applied = changed
    return json.dumps(new_body, ensure_ascii=False).encode("utf-8"), applied


class Batcher:
    """Embeds the routed texts of requests that arrive together in one forward pass.

    The first request is embedded at once; those arriving meanwhile wait and go together
    next (up to `size`).  On a busy CPU this is several times the throughput of one text at a
    time (docs/benchmarks.md, serving).  A text's vectors then depend on its batch's padding
    by about 1e-3 in cosine (bfloat16), which moves only a request scored at the threshold.
    """

    def __init__(self, embedder_of, size: int = 32):
        self.embedder_of, self.size = embedder_of, size
        self.pending: list[tuple[str, asyncio.Future]] = []
        self.task: asyncio.Task | None = None

    async def vectors(self, text: str):
        future = asyncio.get_running_loop().create_future()
        self.pending.append((text, future))
        if self.task is None:
            self.task = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        from starlette.concurrency import run_in_threadpool

        from editspec.families.plugin.router import query_vectors

        try:
            while self.pending:
                batch, self.pending = self.pending[:self.size], self.pending[self.size:]
                try:
                    found = await run_in_threadpool(query_vectors, self.embedder_of(), [t for t, _ in batch],
                                                    fast=True)
                except Exception as error:  # noqa: BLE001 - each waiting request gets the error
                    found = [error] * len(batch)
                for (_, future), vectors in zip(batch, found):
                    if future.done():       # its request was cancelled meanwhile
                        continue
                    if isinstance(vectors, Exception):
                        future.set_exception(vectors)
                    else:
                        future.set_result(vectors)
        finally:
            self.task = None


def create_proxy_app(plugin, upstream_url: str, *, timeout: float = 120.0, retries: int = 3,
                     backoff: float = 0.5, limits: ProxyLimits | None = None):
    """The ASGI app that applies `plugin` in front of `upstream_url`, within `limits`.

    `plugin` is an `editspec.blackbox.Plugin`, or a function returning one, called in the
    background at start (`/healthz` says `loading` until then).  `timeout` bounds each try.
    """
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route

    limits = limits or ProxyLimits()
    state = ServerState()
    metrics = ServerMetrics("editspec_proxy")
    edited = metrics.registry.counter("editspec_proxy_edited_requests_total", "Requests an edit applied to.")
    edits = metrics.registry.counter("editspec_proxy_edits_applied_total", "Edits applied, summed over requests.")
    trouble = metrics.registry.counter(
        "editspec_proxy_upstream_events_total", "Upstream trouble by kind: retry, timeout, unreachable, "
        "status_5xx, stream_dropped.", ("kind",))
    upstream = Upstream(upstream_url, timeout=timeout, retries=retries, backoff=backoff,
                        connections=limits.max_concurrent, on_event=lambda kind: trouble.inc(kind=kind))
    held = {"plugin": None if callable(plugin) else plugin}
    if held["plugin"] is not None:
        state.ready()
    probed = {"at": -math.inf, "answer": (False, {})}
    batcher = Batcher(lambda: held["plugin"].embedder)

    async def forward(request):
        path = request.path_params["path"]
        raw = await request.body()
        applied: list[str] = []
        if request.method == "POST":
            loaded = held["plugin"]
            # Parsing a body of up to --max-body-bytes (and finding the subjects it names) is CPU
            # work: a large one off the event loop; a small one costs less than the thread hop.
            args = (loaded, path, raw, limits.max_completion_tokens)
            body, text, embed = plan(*args) if len(raw) <= _INLINE_BYTES else await run_in_threadpool(plan, *args)
            if embed:
                vectors = await batcher.vectors(text)
                raw, applied = await run_in_threadpool(rewrite, loaded, path, body, raw, vectors)
            elif body is not None and text is None:
                # Not routed by one text (a list of prompts, ...): the plugin embeds what it needs.
                raw, applied = await run_in_threadpool(rewrite, loaded, path, body, raw)
        until = deadline(request)
        response = await upstream.send(request.method, path, raw, forwarded(request.headers),
                                       params=request.query_params, until=until)
        headers = returned(response.headers)
        if applied:
            headers[EDITS_HEADER] = ",".join(applied)
            edited.inc()
            edits.inc(len(applied))
        if _whole(response):
            return Response(await _read(response, until), status_code=response.status_code, headers=headers)
        return StreamingResponse(_relay(response, until), status_code=response.status_code, headers=headers,
                                 background=BackgroundTask(response.aclose))

    def _whole(response) -> bool:
        """A small answer of known length that is not an event stream: read whole, then sent
        with its length (cheaper than relaying it, and a broken read can still be a clean error)."""
        length = response.headers.get("content-length", "")
        return (length.isdigit() and int(length) <= _WHOLE_BYTES
                and "text/event-stream" not in response.headers.get("content-type", ""))

    async def _read(response, until: float) -> bytes:
        try:
            async with asyncio.timeout(None if until == math.inf else until - time.monotonic()):
                return b"".join([chunk async for chunk in response.chunks()])
        except TimeoutError:
            raise timed_out(limits.request_timeout) from None
        except UpstreamDropped as error:
            trouble.inc(kind="stream_dropped")
            raise ApiError(f"the upstream API dropped the connection mid-answer ({error})", status=502,
                           kind="upstream_error", code="upstream_dropped") from None
        finally:
            await response.aclose()

    async def _relay(response, until: float):
        streamed = "text/event-stream" in response.headers.get("content-type", "")
        chunks = response.chunks()
        while True:
            try:
                async with asyncio.timeout(None if until == math.inf else until - time.monotonic()):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            except TimeoutError:
                problem = timed_out(limits.request_timeout)
            except UpstreamDropped as error:
                # Too late to retry: the caller already has part of the answer.
                trouble.inc(kind="stream_dropped")
                problem = ApiError(f"the upstream API dropped the stream ({error})",
                                   status=502, kind="upstream_error", code="upstream_dropped")
            else:
                yield chunk
                continue
            # End the stream with an error event the caller can see, rather than a silent cut.
            if streamed:
                yield sse(problem.body())
            return

    async def probe():
        if time.monotonic() - probed["at"] > _PROBE_SECONDS:
            probed["answer"], probed["at"] = await upstream.probe(), time.monotonic()
        return probed["answer"]

    def describe() -> dict:
        loaded = held["plugin"]
        return {"plugin": loaded.kind if loaded else None, "edits": len(loaded.memory) if loaded else None}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if held["plugin"] is None and state.status == "loading":
            state.run_loader(plugin, lambda found: held.update(plugin=found),
                             describe=lambda error: f"{type(error).__name__}: {error}")
        try:
            yield
        finally:
            await upstream.aclose()

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    routes = [*ops_routes(state, metrics, describe, probe), Route("/v1/{path:path}", forward, methods=methods)]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=EXCEPTION_HANDLERS)
    return Guard(app, limits, metrics, state)
