"""HTTP pieces shared by the local model server and the editing proxy: OpenAI-style errors,
JSON bodies and server-sent events.

>>> sse({"a": 1})
b'data: {"a": 1}\\n\\n'
"""
from __future__ import annotations

import json
from typing import Any


class ApiError(Exception):
    """An error returned to an API caller as OpenAI's `{"error": {...}}` with an HTTP status."""

    def __init__(self, message: str, *, status: int = 400, kind: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message, self.status, self.kind, self.param, self.code = message, status, kind, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def error_response(error: ApiError):
    """A Starlette JSON response for `error`."""
    from starlette.responses import JSONResponse

    return JSONResponse(error.body(), status_code=error.status)


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
