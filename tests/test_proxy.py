"""The editing proxy and EditedClient against fake upstreams: bytes, headers, retries, streams, load.

The plugin uses the hashing stand-in embedder; the upstream is a small Starlette app that
records what reached it.  The real model behind the real proxy is in test_api_models.py.
"""
from __future__ import annotations

import asyncio
import json
import logging
from concurrent.futures import ThreadPoolExecutor

import httpx2
import openai
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from editspec.blackbox import EditedClient
from editspec.serve.proxy import EDITS_HEADER, create_proxy_app

from blackbox_helpers import free_port, make_plugin, serving

SECRET = "sk-test-0123456789abcdef"


class FakeUpstream:
    """Records requests; fails the first `failures` with 503; streams when asked."""

    def __init__(self, failures: int = 0, delay: float = 0.0):
        self.failures, self.delay = failures, delay
        self.seen: list[dict] = []

    def app(self):
        async def handle(request):
            raw = await request.body()
            self.seen.append({"path": request.url.path, "raw": raw, "headers": dict(request.headers)})
            if len(self.seen) <= self.failures:
                return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)
            if self.delay:
                await asyncio.sleep(self.delay)
            if request.method == "GET":
                return JSONResponse({"object": "list", "data": [{"id": "fake", "object": "model",
                                                                 "created": 0, "owned_by": "me"}]})
            body = json.loads(raw)
            text = body.get("prompt") or body["messages"][-1]["content"]
            if body.get("stream"):
                return StreamingResponse(_events(text), media_type="text/event-stream")
            return JSONResponse(_completion(text))

        return Starlette(routes=[Route("/v1/{path:path}", handle, methods=["GET", "POST"])])


def _completion(text: str) -> dict:
    return {"id": "cmpl-1", "object": "text_completion", "created": 0, "model": "fake",
            "choices": [{"index": 0, "text": f"echo:{text}", "finish_reason": "stop", "logprobs": None}]}


async def _events(text: str):
    for piece in ("echo:", text):
        chunk = _completion(piece)
        chunk["choices"][0]["finish_reason"] = None
        yield f"data: {json.dumps(chunk)}\n\n".encode()
    yield b"data: [DONE]\n\n"


@pytest.fixture
def plugin(tmp_path):
    return make_plugin(tmp_path)


@pytest.fixture
def stack(plugin):
    upstream = FakeUpstream()
    with serving(upstream.app()) as upstream_url, \
            serving(create_proxy_app(plugin, upstream_url, retries=2, backoff=0.01)) as proxy_url:
        yield upstream, proxy_url


def test_out_of_scope_bytes_go_upstream_unchanged(stack):
    upstream, proxy = stack
    raw = b'{"model":  "fake",\n "prompt": "Bananas are",   "max_tokens": 3}'
    response = httpx2.post(f"{proxy}/completions", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 200 and EDITS_HEADER not in response.headers
    assert upstream.seen[-1]["raw"] == raw
    garbage = b"{not json"
    httpx2.post(f"{proxy}/completions", content=garbage)
    assert upstream.seen[-1]["raw"] == garbage


def test_in_scope_request_is_rewritten_and_marked(stack, plugin):
    upstream, proxy = stack
    response = httpx2.post(f"{proxy}/completions", json={"model": "fake", "prompt": "Ruritania's capital city is"})
    assert response.headers[EDITS_HEADER] == plugin.memory.records[0]["id"]
    sent = json.loads(upstream.seen[-1]["raw"])["prompt"]
    assert "[Updated Information]:\nThe capital of Ruritania is Strelsau\n" in sent
    assert response.json()["choices"][0]["text"] == f"echo:{sent}"


def test_authorization_is_forwarded_and_never_logged(stack, caplog, capfd):
    upstream, proxy = stack
    caplog.set_level(logging.DEBUG)
    client = openai.OpenAI(base_url=proxy, api_key=SECRET, max_retries=0)
    assert [m.id for m in client.models.list()] == ["fake"]
    client.completions.create(model="fake", prompt="The capital of Ruritania is")
    assert all(seen["headers"]["authorization"] == f"Bearer {SECRET}" for seen in upstream.seen)
    out, err = capfd.readouterr()
    assert SECRET not in out + err + caplog.text


def test_streams_pass_through(stack):
    _, proxy = stack
    client = openai.OpenAI(base_url=proxy, api_key="x", max_retries=0)
    pieces = [c.choices[0].text for c in client.completions.create(model="fake", prompt="Hi", stream=True)]
    assert pieces == ["echo:echo:", "echo:Hi"]  # each event is a whole fake completion


def test_fifty_concurrent_requests(plugin):
    upstream = FakeUpstream(delay=0.05)
    with serving(upstream.app()) as upstream_url, serving(create_proxy_app(plugin, upstream_url)) as proxy:
        client = openai.OpenAI(base_url=proxy, api_key="x", max_retries=0, timeout=60)
        prompts = [("The capital of Ruritania is" if i % 2 else f"Bananas number {i} are") for i in range(50)]
        with ThreadPoolExecutor(50) as pool:
            answers = list(pool.map(lambda p: client.completions.create(model="fake", prompt=p), prompts))
    assert len(answers) == 50 and all(a.choices[0].text.startswith("echo:") for a in answers)
    assert len(upstream.seen) == 50


def test_5xx_is_retried_with_backoff(plugin):
    upstream = FakeUpstream(failures=2)
    with serving(upstream.app()) as upstream_url, \
            serving(create_proxy_app(plugin, upstream_url, retries=3, backoff=0.01)) as proxy:
        response = httpx2.post(f"{proxy}/completions", json={"model": "fake", "prompt": "Bananas"})
    assert response.status_code == 200 and len(upstream.seen) == 3


def test_persistent_5xx_reaches_the_caller(plugin):
    upstream = FakeUpstream(failures=100)
    with serving(upstream.app()) as upstream_url, \
            serving(create_proxy_app(plugin, upstream_url, retries=2, backoff=0.01)) as proxy:
        client = openai.OpenAI(base_url=proxy, api_key="x", max_retries=0)
        with pytest.raises(openai.InternalServerError, match="overloaded"):
            client.completions.create(model="fake", prompt="Bananas")
    assert len(upstream.seen) == 3


def test_refused_connection_is_a_clear_api_error(plugin):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with serving(create_proxy_app(plugin, dead, retries=2, backoff=0.01)) as proxy:
        response = httpx2.post(f"{proxy}/chat/completions",
                               json={"model": "m", "messages": [{"role": "user", "content": "Hi"}]})
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "upstream_unreachable" and "3 tries" in error["message"]


def test_upstream_timeout_is_a_clear_api_error(plugin):
    upstream = FakeUpstream(delay=2.0)
    with serving(upstream.app()) as upstream_url, \
            serving(create_proxy_app(plugin, upstream_url, timeout=0.2, retries=1, backoff=0.01)) as proxy:
        response = httpx2.post(f"{proxy}/completions", json={"model": "fake", "prompt": "Bananas"}, timeout=30)
    assert response.status_code == 504 and response.json()["error"]["code"] == "upstream_timeout"
    assert len(upstream.seen) == 2


async def _cut_answer(scope, receive, send):
    """An upstream whose JSON answer stops at 12 of the 1,000 bytes it announced."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        return await send({"type": "lifespan.shutdown.complete"})
    await receive()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"1000")]})
    await send({"type": "http.response.body", "body": b'{"id": "cut"', "more_body": False})


def test_an_answer_cut_halfway_is_a_clean_502(plugin):
    with serving(_cut_answer) as upstream_url, serving(create_proxy_app(plugin, upstream_url, retries=0)) as proxy:
        client = openai.OpenAI(base_url=proxy, api_key="x", max_retries=0, timeout=30)
        with pytest.raises(openai.APIStatusError) as caught:
            client.completions.create(model="fake", prompt="Bananas")
    assert caught.value.status_code == 502 and caught.value.body["code"] == "upstream_dropped"


class Recorder:
    """Stands in for an openai endpoint: returns the keyword arguments it was called with."""

    def create(self, **kwargs):
        return kwargs


class FakeOpenAI:
    def __init__(self):
        self.completions = Recorder()
        self.chat = type("Chat", (), {"completions": Recorder()})()
        self.models = "models endpoint"


def test_edited_client_rewrites_in_scope_and_passes_the_rest_unchanged(plugin):
    client = EditedClient(FakeOpenAI(), plugin)
    messages = [{"role": "user", "content": "Bananas?"}]
    sent = client.chat.completions.create(model="m", messages=messages, stream=True)
    assert sent["messages"] is messages and sent["stream"] is True and client.last_applied == []
    sent = client.completions.create(model="m", prompt="Freedonia's capital city is", temperature=0)
    assert sent["prompt"].startswith("Please acknowledge") and sent["temperature"] == 0
    assert client.last_applied == [plugin.memory.records[1]["id"]]
    assert client.models == "models endpoint"
