"""`editspec serve`: an OpenAI-compatible proxy that applies a black-box plugin to each request.

`POST /v1/chat/completions` and `/v1/completions` are routed through the plugin: when an edit
applies, the request's last user message (or prompt) is rewritten and re-serialised;
otherwise the request's bytes go upstream exactly as they came.  Every other `/v1/...`
request (`GET /v1/models`, ...) is forwarded unchanged.  Responses, streamed ones included,
come back as the upstream sent them, with `x-editspec-edits` naming the edits applied.
The caller's Authorization header is forwarded and never logged or stored.

>>> app = create_proxy_app(load_plugin("build/leadership.retrieval"), "http://127.0.0.1:8000/v1")  # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import json

from editspec.blackbox.http import ApiError, error_response, parse_json, sse
from editspec.blackbox.upstream import Upstream, forwarded, returned

EDITS_HEADER = "x-editspec-edits"
_ROUTED = {"chat/completions": "rewrite_chat", "completions": "rewrite_completion"}


def rewrite(plugin, path: str, raw: bytes) -> tuple[bytes, list[str]]:
    """The bytes to send upstream for a request body, and the edit ids applied (none: `raw`)."""
    method = _ROUTED.get(path)
    if method is None:
        return raw, []
    try:
        body = parse_json(raw)
    except ApiError:
        return raw, []  # the upstream answers malformed requests itself
    changed = getattr(plugin, method)(body)
    if changed is None:
        return raw, []
    new_body, applied = changed
    return json.dumps(new_body, ensure_ascii=False).encode("utf-8"), applied


def create_proxy_app(plugin, upstream_url: str, *, timeout: float = 120.0, retries: int = 3,
                     backoff: float = 0.5):
    """The Starlette app that applies `plugin` (an `editspec.blackbox.Plugin`) in front of `upstream_url`."""
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    upstream = Upstream(upstream_url, timeout=timeout, retries=retries, backoff=backoff)

    async def forward(request):
        path = request.path_params["path"]
        raw = await request.body()
        applied: list[str] = []
        if request.method == "POST":
            # Embedding the query is CPU work: keep it off the event loop.
            raw, applied = await run_in_threadpool(rewrite, plugin, path, raw)
        try:
            response = await upstream.send(request.method, path, raw, forwarded(request.headers),
                                           params=request.query_params)
        except ApiError as error:
            return error_response(error)
        headers = returned(response.headers)
        if applied:
            headers[EDITS_HEADER] = ",".join(applied)
        return StreamingResponse(_relay(response), status_code=response.status_code, headers=headers,
                                 background=BackgroundTask(response.aclose))

    async def _relay(response):
        import httpx2

        try:
            async for chunk in response.aiter_raw():
                yield chunk
        except httpx2.TransportError as error:
            # Too late to retry: the caller already has part of the answer.  End the stream
            # with an error event it can see, rather than a silent cut.
            if "text/event-stream" in response.headers.get("content-type", ""):
                yield sse(ApiError(f"the upstream API dropped the stream ({type(error).__name__})",
                                   status=502, kind="upstream_error").body())

    @contextlib.asynccontextmanager
    async def lifespan(app):
        try:
            yield
        finally:
            await upstream.aclose()

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    return Starlette(routes=[Route("/v1/{path:path}", forward, methods=methods)], lifespan=lifespan)
