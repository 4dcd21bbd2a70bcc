"""Hostile and overload requests against the real servers, each in its own process under
`ulimit -v` (see serving_helpers): bodies over the limit, prompts over the context,
max_tokens over the cap, a full line of waiting requests, SIGTERM with a request in flight.

The model server serves a tiny random Llama (1024 positions) whose greedy generation never
stops early, so a request's length is its `max_tokens` (1000 tokens take a few seconds).
"""
from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx2
import openai
import pytest

from blackbox_helpers import serving
from serving_helpers import APP_SCRIPT, ServerProcess, tiny_checkpoint
from test_proxy import FakeUpstream

HUGE = 20 << 20   # the 20 MB message of issue 19


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny"), positions=1024)


@pytest.fixture(scope="module")
def model_server(checkpoint):
    flags = ["--max-body-bytes", "256KiB", "--max-prompt-tokens", "64", "--max-completion-tokens", "600",
             "--max-waiting", "1", "--request-timeout", "60"]
    with ServerProcess(["serve-model", "--model", str(checkpoint), *flags]) as server:
        yield server


def client(server, **options) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key="x", max_retries=0, timeout=60, **options)


def metric(server, name: str) -> float:
    for line in httpx2.get(server.root + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


def test_the_banner_prints_the_limits(model_server):
    banner = "\n".join(model_server.log)
    assert "limits: body <= 256 KiB, 1 at once, 1 waiting, 60 s per request" in banner
    assert "prompts <= 64 tokens, max_tokens <= 600" in banner
    assert "context 1024 tokens, prompts <= 64 tokens" in banner


def test_a_body_over_the_limit_is_refused_with_413_and_the_server_lives(model_server):
    declared = httpx2.post(model_server.url + "/completions", content=b"x" * HUGE,
                           headers={"content-type": "application/json"}, timeout=60)
    assert declared.status_code == 413 and declared.json()["error"]["code"] == "request_too_large"

    def chunks():                        # no Content-Length: counted as it arrives
        for _ in range(HUGE // (1 << 20)):
            yield b" " * (1 << 20)

    chunked = httpx2.post(model_server.url + "/completions", content=chunks(), timeout=60)
    assert chunked.status_code == 413
    with pytest.raises(openai.APIStatusError, match="larger than this server's limit of 256 KiB") as refused:
        client(model_server).completions.create(model="m", prompt="word " * 60_000, max_tokens=1)
    assert refused.value.status_code == 413
    assert httpx2.get(model_server.root + "/healthz").status_code == 200
    assert metric(model_server, "editspec_model_ready") == 1


def test_malformed_json_is_a_400(model_server):
    response = httpx2.post(model_server.url + "/chat/completions", content=b"{not json")
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]


def test_a_prompt_over_the_token_limit_is_refused_with_400(model_server):
    api = client(model_server)
    with pytest.raises(openai.BadRequestError, match=r"the prompt has \d+ tokens") as refused:
        api.completions.create(model="m", prompt="The capital of France is Paris. " * 20, max_tokens=1)
    assert refused.value.code == "context_length_exceeded" and refused.value.param == "prompt"
    # Far too long to fit in 64 tokens whatever its tokens: refused on its length, never tokenised.
    with pytest.raises(openai.BadRequestError, match="characters, more than 64 tokens can hold"):
        api.chat.completions.create(model="m", messages=[{"role": "user", "content": "a" * 100_000}])
    assert api.completions.create(model="m", prompt="The capital of France is", max_tokens=3).usage.completion_tokens == 3


@pytest.mark.parametrize("field", [{"temperature": "hot"}, {"seed": "x"}, {"top_p": 3}, {"logprobs": "many"},
                                   {"stream": True, "stream_options": "yes"}])
def test_fields_of_the_wrong_type_are_400s(model_server, field):
    response = httpx2.post(model_server.url + "/completions", json={"model": "m", "prompt": "Hi", "max_tokens": 2,
                                                                    **field})
    if "stream_options" in field:                       # ignored unless it is an object
        assert response.status_code == 200 and "data: [DONE]" in response.text
    else:
        assert response.status_code == 400 and response.json()["error"]["param"] == next(iter(field))


def test_max_tokens_over_the_cap_is_refused_with_400(model_server):
    with pytest.raises(openai.BadRequestError, match="max_tokens is too large: 601") as refused:
        client(model_server).completions.create(model="m", prompt="Hi", max_tokens=601)
    assert refused.value.param == "max_tokens"


def test_past_the_waiting_line_requests_get_503_with_retry_after(model_server):
    api = client(model_server)
    first = api.completions.create(model="m", prompt="One", max_tokens=500, stream=True)
    next(iter(first))                                      # generating now
    waiting: list = []
    second = threading.Thread(target=lambda: waiting.append(
        api.completions.create(model="m", prompt="Two", max_tokens=5)))
    second.start()
    deadline = time.monotonic() + 10
    while metric(model_server, "editspec_model_requests_waiting") < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    with pytest.raises(openai.InternalServerError, match="busy") as refused:
        api.completions.create(model="m", prompt="Three", max_tokens=5)
    assert refused.value.status_code == 503 and int(refused.value.response.headers["retry-after"]) >= 1
    assert sum(len(c.choices[0].text) > 0 for c in first) > 0   # the running request finishes
    second.join(timeout=60)
    assert waiting and waiting[0].usage.completion_tokens == 5   # and so does the waiting one


def test_sigterm_lets_the_request_in_flight_finish(checkpoint):
    with ServerProcess(["serve-model", "--model", str(checkpoint), "--shutdown-timeout", "60"]) as server:
        api = client(server)
        stream = api.completions.create(model="m", prompt="Go", max_tokens=400, stream=True,
                                        stream_options={"include_usage": True})
        chunks = iter(stream)
        next(chunks)
        server.terminate()
        time.sleep(0.5)
        with pytest.raises(httpx2.ConnectError):            # no longer accepting
            httpx2.get(server.root + "/healthz", timeout=5)
        rest = list(chunks)
        assert rest[-1].usage.completion_tokens == 400       # the whole answer came, then the usage chunk
        assert server.process.wait(timeout=60) == 0
    assert any("finishing 1 request(s) in flight" in line for line in server.log)
    assert server.log[-1] == "editspec: stopped"


@pytest.fixture(scope="module")
def recording_upstream():
    upstream = FakeUpstream(delay=1.0)
    with serving(upstream.app()) as url:
        yield upstream, url


def test_the_proxy_refuses_before_it_embeds_or_forwards(recording_upstream):
    upstream, url = recording_upstream
    flags = ["--max-body-bytes", "1MiB", "--max-completion-tokens", "100", "--max-concurrent", "1",
             "--max-waiting", "0"]
    with ServerProcess(["proxy", "--upstream", url, *flags], script=APP_SCRIPT) as proxy:
        before = len(upstream.seen)
        big = json.dumps({"model": "m", "prompt": "The capital of Ruritania is " + "x" * HUGE}).encode()
        response = httpx2.post(proxy.url + "/completions", content=big, timeout=60,
                               headers={"content-type": "application/json"})
        assert response.status_code == 413
        api = openai.OpenAI(base_url=proxy.url, api_key="x", max_retries=0, timeout=60)
        with pytest.raises(openai.BadRequestError, match="max_tokens is too large: 101"):
            api.completions.create(model="m", prompt="The capital of Ruritania is", max_tokens=101)
        assert len(upstream.seen) == before                  # nothing reached the upstream
        slow = threading.Thread(target=lambda: api.completions.create(model="m", prompt="Bananas"))
        slow.start()
        time.sleep(0.3)                                       # that one holds the only turn for 1 s
        with pytest.raises(openai.InternalServerError, match="busy") as refused:
            api.completions.create(model="m", prompt="Bananas too")
        assert "retry-after" in refused.value.response.headers
        slow.join(timeout=30)
        metrics = httpx2.get(proxy.root + "/metrics").text
        assert 'editspec_proxy_refused_total{reason="body_too_large"} 1' in metrics
        assert 'editspec_proxy_refused_total{reason="busy"} 1' in metrics


def hanging_upstream():
    """Lists its models at once; answers completions after 30 s."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def models(request):
        return JSONResponse({"object": "list", "data": []})

    async def hang(request):
        await asyncio.sleep(30)
        return JSONResponse({})

    return Starlette(routes=[Route("/v1/models", models), Route("/v1/completions", hang, methods=["POST"])])


def test_sigterm_cuts_what_outlasts_the_shutdown_bound_with_a_503():
    with serving(hanging_upstream()) as url, \
            ServerProcess(["proxy", "--upstream", url, "--shutdown-timeout", "1"], script=APP_SCRIPT) as proxy:
        api = openai.OpenAI(base_url=proxy.url, api_key="x", max_retries=0, timeout=60)
        outcome: list = []

        def call():
            try:
                api.completions.create(model="m", prompt="Bananas")
            except openai.APIError as error:
                outcome.append(error)

        caller = threading.Thread(target=call)
        caller.start()
        time.sleep(0.5)
        started = time.monotonic()
        proxy.terminate()
        assert proxy.process.wait(timeout=20) == 0 and time.monotonic() - started < 10
        caller.join(timeout=10)
    assert isinstance(outcome[0], openai.InternalServerError) and outcome[0].status_code == 503
    assert outcome[0].code == "server_draining"
