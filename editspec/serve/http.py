"""HTTP pieces shared by the local model server and the editing proxy: OpenAI-style errors,
JSON bodies and server-sent events.

>>> sse({"a": 1})
b'data: {"a": 1}\\n\\n'
"""
from __future__ import annotations

import contextlib
import json
from typing import Any, Iterator


class ApiError(Exception):
    """An error returned to an API caller as OpenAI's `{"error": {...}}` with an HTTP status."""

    def __init__(self, message: str, *, status: int = 400, kind: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message, self.status, self.kind, self.param, self.code = message, status, kind, param, code
        self.headers = dict(headers or {})

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def error_response(error: ApiError):
    """A Starlette JSON response for `error`."""
    from starlette.responses import JSONResponse

    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def handle_api_error(request, error: ApiError):
    """Starlette exception handler: an `ApiError` raised anywhere in a route is its JSON answer."""
    return error_response(error)


async def handle_unexpected(request, error: Exception):
    """Starlette's 500 handler: even a bug answers an OpenAI-style JSON error (its traceback goes
    to the server's log, never to the caller)."""
    return error_response(ApiError(f"internal error ({type(error).__name__}); see the server's log",
                                   status=500, kind="server_error", code="internal_error"))


# Both servers' Starlette apps: API errors as themselves, anything else as a JSON 500.
EXCEPTION_HANDLERS = {ApiError: handle_api_error, Exception: handle_unexpected}


async def read_json(request) -> dict:
    """The request's JSON object body, or an `ApiError` (400) saying what is wrong with it."""
    raw = await request.body()
    return parse_json(raw)


def parse_json(raw: bytes) -> dict:
    """A JSON object from bytes, or an `ApiError` (400)."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise ApiError(f"the request body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise ApiError("the request body must be a JSON object")
    return body


def sse(data: Any) -> bytes:
    """One server-sent event carrying `data` as JSON."""
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode("utf-8")


@contextlib.contextmanager
def serve_in_background(app, *, host: str = "127.0.0.1", timeout: float = 30.0) -> Iterator[str]:
    """Serve the ASGI `app` on a free port of `host` in a daemon thread; yields its base URL.

    For callers in the same process (`editspec bench` verifying plugins through a local model,
    tests); the server stops when the block exits.

    >>> with serve_in_background(create_model_app(loaded)) as url:   # doctest: +SKIP
    ...     verify_api(spec, url, artifact="build/x.retrieval")
    """
    import socket
    import threading
    import time

    import uvicorn

    listener = socket.socket()
    listener.bind((host, 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    try:
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError(f"the local server on {host}:{port} did not start")
            time.sleep(0.02)
        yield f"http://{host}:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=timeout)
        listener.close()
