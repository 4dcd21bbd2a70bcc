"""The servers in this process on friendly requests: streaming through edits with the real
`openai` client, readiness, metrics, deadlines and the context budget (tiny model, hashing
plugin).  Hostile requests are in test_serving_limits.py, against servers in their own process.
"""
from __future__ import annotations

import asyncio
import threading
import time

import httpx2
import openai
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from editspec.serve.guard import Guard, ModelLimits, ServeLimits
from editspec.serve.http import ApiError
from editspec.serve.model_server import ModelService, create_model_app
from editspec.serve.proxy import EDITS_HEADER, create_proxy_app
from editspec.serve.runtime import ServerState
from editspec.serve.telemetry import Registry, ServerMetrics

from blackbox_helpers import free_port, make_plugin, serving
from serving_helpers import tiny_checkpoint

IN_SCOPE = "The capital of Ruritania is"
OUT_OF_SCOPE = "Bananas are"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from editspec.model.loading import load_model

    return load_model(str(tiny_checkpoint(tmp_path_factory.mktemp("tiny"), positions=512)))


@pytest.fixture(scope="module")
def stack(tiny, tmp_path_factory):
    plugin = make_plugin(tmp_path_factory.mktemp("plugin"))
    with serving(create_model_app(tiny)) as model_url, serving(create_proxy_app(plugin, model_url)) as proxy_url:
        yield {"model": model_url, "proxy": proxy_url, "plugin": plugin}


def api(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=60)


@pytest.mark.parametrize("prompt, edited", [(IN_SCOPE, True), (OUT_OF_SCOPE, False)])
def test_completions_stream_through_the_proxy(stack, prompt, edited):
    proxy = api(stack["proxy"])
    raw = proxy.completions.with_raw_response.create(model="m", prompt=prompt, max_tokens=12, temperature=0,
                                                     stream=True, stream_options={"include_usage": True})
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert (EDITS_HEADER in raw.headers) is edited
    chunks = list(raw.parse())
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    usage = chunks[-1].usage
    assert usage.completion_tokens == 12 and not chunks[-1].choices
    # The same request unstreamed gets the same answer: the upstream saw the same (edited) prompt.
    whole = proxy.completions.create(model="m", prompt=prompt, max_tokens=12, temperature=0)
    assert text == whole.choices[0].text and usage.prompt_tokens == whole.usage.prompt_tokens
    direct = api(stack["model"]).completions.create(model="m", prompt=prompt, max_tokens=1)
    assert (usage.prompt_tokens > direct.usage.prompt_tokens) is edited   # the edit's text was added


@pytest.mark.parametrize("question, edited", [("What is the capital of Ruritania?", True), ("Hello there", False)])
def test_chat_streams_through_the_proxy(stack, question, edited):
    proxy = api(stack["proxy"])
    messages = [{"role": "user", "content": question}]
    raw = proxy.chat.completions.with_raw_response.create(model="m", messages=messages, max_tokens=8,
                                                          temperature=0, stream=True)
    assert (raw.headers.get(EDITS_HEADER) == stack["plugin"].memory.records[0]["id"]) is edited
    streamed = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    whole = proxy.chat.completions.create(model="m", messages=messages, max_tokens=8, temperature=0)
    assert streamed == whole.choices[0].message.content and streamed


def test_proxy_metrics_count_edits_and_requests(stack):
    before = _metrics(stack["proxy"])
    api(stack["proxy"]).completions.create(model="m", prompt=IN_SCOPE, max_tokens=1)
    after = _metrics(stack["proxy"])
    assert after["editspec_proxy_edits_applied_total"] == before.get("editspec_proxy_edits_applied_total", 0) + 1
    key = 'editspec_proxy_requests_total{route="/v1/completions",status="200"}'
    assert after[key] == before.get(key, 0) + 1
    assert after['editspec_proxy_request_duration_seconds_count{route="/v1/completions"}'] == after[key]


def _metrics(url: str) -> dict[str, float]:
    response = httpx2.get(url.removesuffix("/v1") + "/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = [line for line in response.text.splitlines() if line and not line.startswith("#")]
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines}


def test_model_server_is_ready_only_once_loaded(tiny):
    release = threading.Event()

    def load():
        release.wait(30)
        return tiny

    with serving(create_model_app(load, "tiny")) as url:
        root = url.removesuffix("/v1")
        loading = httpx2.get(root + "/healthz")
        assert loading.status_code == 503 and loading.json()["status"] == "loading"
        refused = httpx2.post(url + "/completions", json={"model": "m", "prompt": "Hi"})
        assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
        release.set()
        deadline = time.monotonic() + 30
        while httpx2.get(root + "/healthz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        ready = httpx2.get(root + "/healthz").json()
        assert ready == {"status": "ready", "model": "tiny", "context_tokens": 512, "max_prompt_tokens": 512,
                         "max_completion_tokens": 1024}


def test_proxy_is_ready_only_when_the_upstream_answers(tiny, tmp_path):
    port = free_port()
    upstream_url = f"http://127.0.0.1:{port}/v1"
    with serving(create_proxy_app(make_plugin(tmp_path), upstream_url)) as proxy:
        down = httpx2.get(proxy.removesuffix("/v1") + "/healthz")
        assert down.status_code == 503 and down.json()["status"] == "upstream_unavailable"
        assert down.json()["upstream"]["error"] == "ConnectError"
        import uvicorn

        server = uvicorn.Server(uvicorn.Config(create_model_app(tiny), port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 30
            while not server.started and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(1.1)                               # past the probe's one-second memory
            up = httpx2.get(proxy.removesuffix("/v1") + "/healthz")
            assert up.status_code == 200 and up.json()["upstream"]["status"] == 200
            assert up.json()["plugin"] == "retrieval" and up.json()["edits"] == 2
        finally:
            server.should_exit = True
            thread.join(timeout=30)


def test_a_request_past_its_timeout_is_a_504():
    async def slow(request):
        await asyncio.sleep(5)
        return JSONResponse({})

    limits = ServeLimits(request_timeout=0.2)
    state = ServerState()
    state.ready()
    app = Guard(Starlette(routes=[Route("/v1/slow", slow)]), limits, ServerMetrics("t"), state)
    with serving(app) as url:
        started = time.monotonic()
        response = httpx2.get(url + "/slow", timeout=30)
    assert response.status_code == 504 and response.json()["error"]["code"] == "request_timeout"
    assert time.monotonic() - started < 3


def test_generation_stops_at_the_deadline(tiny):
    service = ModelService("tiny", ModelLimits())
    service.attach(tiny)
    ids, options = service.prepare({"prompt": "Hi", "max_tokens": 50}, chat=False)
    with pytest.raises(ApiError, match="ran past") as stopped:
        list(service.run(ids, options, until=time.monotonic()))
    assert stopped.value.status == 504 and not service.lock.locked()


@pytest.mark.parametrize("body, message", [
    ({"prompt": "Hi", "max_tokens": 511}, "you asked for 5"),
    ({"prompt": [5] * 512}, "leave no room"),
    ({"prompt": [5] * 513}, "the prompt has 513 tokens"),
    ({"prompt": [400, 5]}, "token ids must be between 0 and 319"),
    ({"prompt": "Hi", "stop": ["a", "b", "c", "d", "e"]}, "at most 4"),
])
def test_the_context_budget(tiny, body, message):
    service = ModelService("tiny", ModelLimits(max_completion_tokens=600))
    service.attach(tiny)
    with pytest.raises(ApiError, match=message):
        service.prepare(body, chat=False)


def test_the_budget_fills_the_context_left():
    class Loaded:
        class model:
            config = type("Config", (), {"max_position_embeddings": 100})()
        tokenizer = type("Tokenizer", (), {"get_vocab": lambda self: {"abc": 0}})()
        name = "fake"

    service = ModelService(None, ModelLimits(max_completion_tokens=50))
    service.attach(Loaded())
    assert service.completion_budget({}, chat=True, prompt_tokens=90) == 10
    assert service.completion_budget({}, chat=True, prompt_tokens=10) == 50
    assert service.completion_budget({}, chat=False, prompt_tokens=10) == 16
    assert service.token_chars == 3 and service.name == "fake"


def test_prometheus_text_format():
    registry = Registry()
    counter = registry.counter("x_total", "Things.\nCounted \\ here.", ("kind",))
    counter.inc(kind='a"b')
    counter.inc(2, kind="c")
    histogram = registry.histogram("x_seconds", "Time.", buckets=(0.1, 1.0))
    histogram.observe(0.5)
    registry.gauge("x_up", "Up.", lambda: 1)
    assert registry.render() == "\n".join([
        "# HELP x_total Things.\\nCounted \\\\ here.", "# TYPE x_total counter",
        'x_total{kind="a\\"b"} 1', 'x_total{kind="c"} 2',
        "# HELP x_seconds Time.", "# TYPE x_seconds histogram",
        'x_seconds_bucket{le="0.1"} 0', 'x_seconds_bucket{le="1"} 1', 'x_seconds_bucket{le="+Inf"} 1',
        "x_seconds_sum 0.5", "x_seconds_count 1",
        "# HELP x_up Up.", "# TYPE x_up gauge", "x_up 1"]) + "\n"
    with pytest.raises(ValueError, match="takes labels"):
        counter.inc(other="x")


@pytest.mark.parametrize("retry_after, tries", [("30", 1), ("0", 3)])
def test_the_proxy_honours_the_upstreams_retry_after(tmp_path, retry_after, tries):
    seen = []

    async def busy(request):
        seen.append(time.monotonic())
        return JSONResponse({"error": {"message": "busy"}}, status_code=503, headers={"Retry-After": retry_after})

    upstream = Starlette(routes=[Route("/v1/{path:path}", busy, methods=["POST"])])
    with serving(upstream) as upstream_url, \
            serving(create_proxy_app(make_plugin(tmp_path), upstream_url, retries=2, backoff=0.01)) as proxy:
        with pytest.raises(openai.InternalServerError) as refused:
            api(proxy).completions.create(model="m", prompt=OUT_OF_SCOPE)
    # A wait longer than the proxy's 8 s cap goes back to the caller at once, header and all.
    assert len(seen) == tries and refused.value.response.headers["retry-after"] == retry_after


def test_requests_arriving_together_are_embedded_in_one_batch():
    from blackbox_helpers import HashEmbedder

    from editspec.serve.proxy import Batcher
    from editspec.families.plugin.router import query_vectors

    class Counting(HashEmbedder):
        calls: list[int] = []

        def encode_query(self, texts):
            self.calls.append(len(texts))
            time.sleep(0.05)
            return super().encode(texts)

    embedder = Counting()
    texts = [f"Question number {i} about Ruritania." for i in range(10)]

    async def all_at_once():
        batcher = Batcher(lambda: embedder, size=8)
        return await asyncio.gather(*(batcher.vectors(t) for t in texts))

    found = asyncio.run(all_at_once())
    assert embedder.calls == [8, 2]                         # all ten waited together: batches of at most 8
    for text, vectors in zip(texts, found):
        assert (vectors == query_vectors(HashEmbedder(), [text], fast=True)[0]).all()


def test_a_bug_still_answers_a_json_error():
    from editspec.serve.http import EXCEPTION_HANDLERS

    async def broken(request):
        raise RuntimeError("a bug")

    with serving(Starlette(routes=[Route("/v1/x", broken)], exception_handlers=EXCEPTION_HANDLERS)) as url:
        response = httpx2.get(url + "/x")
    assert response.status_code == 500
    assert response.json()["error"] == {"message": "internal error (RuntimeError); see the server's log",
                                        "type": "server_error", "param": None, "code": "internal_error"}


def test_a_prompt_read_in_chunks_scores_as_one_read(tiny, monkeypatch):
    import torch

    from editspec.serve import generation

    ids = tiny.tokenizer("The capital of France is Paris. " * 6)["input_ids"]
    whole = generation.prompt_logprobs(tiny, ids, top_logprobs=2)
    greedy = [s.token_id for s in generation.generate(tiny, ids, max_tokens=5)]
    monkeypatch.setattr(generation, "PREFILL_CHUNK", 7)
    assert len(ids) > 3 * 7
    chunked = generation.prompt_logprobs(tiny, ids, top_logprobs=2)
    assert [s.token_id for s in generation.generate(tiny, ids, max_tokens=5)] == greedy
    assert torch.allclose(torch.tensor([s.logprob for s in chunked[1:]]), torch.tensor([s.logprob for s in whole[1:]]),
                          atol=1e-4)
    with pytest.raises(TimeoutError):
        generation.prompt_logprobs(tiny, ids, until=time.monotonic())
