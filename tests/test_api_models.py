"""The real default model behind `serve-model`, the editing proxy in front, driven by `openai`.

One module-scoped stack: SmolLM2 served on a free port, the leadership spec compiled with
`retrieval` and `ike` (real MiniLM embeddings), and a proxy for each.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from editspec.blackbox import EditedClient
from editspec.serve.model_server import create_model_app
from editspec.families.plugin.plugin import load_plugin
from editspec.serve.proxy import EDITS_HEADER, create_proxy_app
from editspec.build.compiler import compile_spec

from blackbox_helpers import serving

SPEC = "specs/examples/leadership.edit"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from editspec.model.loading import load_model

    loaded = load_model()
    build = tmp_path_factory.mktemp("artifacts")
    plugins = {kind: load_plugin(compile_spec(SPEC, kind, out=build / kind)) for kind in ("retrieval", "ike")}
    with serving(create_model_app(loaded)) as upstream, \
            serving(create_proxy_app(plugins["retrieval"], upstream)) as retrieval, \
            serving(create_proxy_app(plugins["ike"], upstream)) as ike:
        yield {"loaded": loaded, "upstream": upstream, "retrieval": retrieval, "ike": ike, "plugins": plugins}


def client_for(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="local", max_retries=0, timeout=300)


def test_model_server_matches_the_verifiers_generation_and_scores(stack):
    from editspec.verify.protocols import generate_texts, score_targets

    loaded, api = stack["loaded"], client_for(stack["upstream"])
    assert [m.id for m in api.models.list()] == ["smollm2-135m"]
    prompt = "The capital of France is"
    answer = api.completions.create(model="smollm2-135m", prompt=prompt, max_tokens=6, temperature=0, logprobs=3)
    choice = answer.choices[0]
    assert choice.text == generate_texts(loaded.model, loaded.tokenizer, [prompt], max_new_tokens=6)[0]
    assert "".join(choice.logprobs.tokens) == choice.text and len(choice.logprobs.top_logprobs[0]) == 3
    assert choice.finish_reason == "length" and answer.usage.completion_tokens == 6
    # Scoring through the API (echo + logprobs) gives the verifier's teacher-forced log-probs.
    echoed = api.completions.create(model="smollm2-135m", prompt=prompt + " Paris", max_tokens=0, echo=True,
                                    logprobs=0).choices[0]
    assert echoed.logprobs.token_logprobs[0] is None
    expected = score_targets(loaded.model, loaded.tokenizer, [(prompt, "Paris")])[0].sum_logprob
    assert echoed.logprobs.token_logprobs[-1] == pytest.approx(expected, abs=1e-4)


def test_chat_logprobs_and_streams_agree(stack):
    api = client_for(stack["upstream"])
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    whole = api.chat.completions.create(model="m", messages=messages, max_tokens=10, temperature=0, logprobs=True,
                                        top_logprobs=2).choices[0]
    assert "Paris" in whole.message.content
    tokens = whole.logprobs.content
    assert "".join(t.token for t in tokens) == whole.message.content
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in tokens)
    assert math.isclose(tokens[0].top_logprobs[0].logprob, max(tokens[0].logprob, tokens[0].top_logprobs[1].logprob))
    streamed = api.chat.completions.create(model="m", messages=messages, max_tokens=10, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == whole.message.content
    pieces = api.completions.create(model="m", prompt="The capital of France is", max_tokens=10, temperature=0,
                                    stream=True, stop=["."])
    assert "".join(c.choices[0].text for c in pieces) == " Paris"
    with pytest.raises(openai.BadRequestError, match="n=1"):
        api.completions.create(model="m", prompt="x", n=2)


@pytest.mark.parametrize("kind", ["retrieval", "ike"])
def test_proxy_applies_edits_in_scope_only(stack, kind):
    proxy, direct = client_for(stack[kind]), client_for(stack["upstream"])
    plugin = stack["plugins"][kind]
    for prompt in ("The CEO of Twitter is", "Twitter is led by its chief executive,"):
        raw = proxy.completions.with_raw_response.create(model="m", prompt=prompt, max_tokens=6, temperature=0)
        assert "Yaccarino" in raw.parse().choices[0].text
        assert raw.headers[EDITS_HEADER] == plugin.memory.records[0]["id"]
    question = [{"role": "user", "content": "Who is the CEO of Twitter?"}]
    assert "Yaccarino" in proxy.chat.completions.create(model="m", messages=question, max_tokens=16,
                                                        temperature=0).choices[0].message.content
    for outside in ("The CEO of Apple is", "The capital of France is"):
        raw = proxy.completions.with_raw_response.create(model="m", prompt=outside, max_tokens=6, temperature=0)
        assert EDITS_HEADER not in raw.headers
        expected = direct.completions.create(model="m", prompt=outside, max_tokens=6, temperature=0)
        assert raw.parse().choices[0].text == expected.choices[0].text


def test_edited_client_streams_the_edit(stack):
    client = EditedClient(client_for(stack["upstream"]), stack["plugins"]["retrieval"])
    chunks = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Who runs Twitter?"}],
                                            max_tokens=16, temperature=0, stream=True)
    assert "Yaccarino" in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert client.last_applied == [stack["plugins"]["retrieval"].memory.records[0]["id"]]


def test_fifty_concurrent_requests_through_the_proxy(stack):
    proxy = client_for(stack["retrieval"])
    prompts = [("The CEO of Twitter is" if i % 2 else f"Number {i} is") for i in range(50)]
    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(
            lambda p: proxy.completions.create(model="m", prompt=p, max_tokens=1, temperature=0), prompts))
    assert all(a.choices[0].finish_reason in ("length", "stop") for a in answers)
    assert {a.choices[0].text for a in answers[1::2]} == {" Linda"}


def test_compile_is_deterministic_and_takes_a_template_beside_the_spec(tmp_path):
    spec = tmp_path / "lead.edit"
    spec.write_text(
        'relation ceo {\n  prompt "The CEO of {subject} is"\n  question "Who is the CEO of {subject}?"\n}\n'
        'edit ceo("Twitter") -> "Linda Yaccarino" {\n  keep { ceo("Apple") -> "Tim Cook" }\n}\n'
        'backend retrieval { template "mine.jinja" }\n', encoding="utf-8")
    (tmp_path / "mine.jinja").write_text("Known: {{ facts | join('; ') }}\nQ: {{ query }}", encoding="utf-8")
    first = compile_spec(spec, "retrieval", out=tmp_path / "one")
    second = compile_spec(spec, "retrieval", out=tmp_path / "two")
    assert first.payload_hash == second.payload_hash
    for name in ("memory.jsonl", "embeddings.safetensors", "router.json", "template.jinja"):
        assert (first.path / "plugin" / name).read_bytes() == (second.path / "plugin" / name).read_bytes()
    prompt, _ = load_plugin(first).augment("Who is the CEO of Twitter?")
    assert prompt == "Known: The CEO of Twitter is Linda Yaccarino\nQ: Who is the CEO of Twitter?"


def test_ike_says_that_its_template_shapes_completions_only(tmp_path):
    spec = tmp_path / "lead.edit"
    spec.write_text(
        'relation ceo {\n  prompt "The CEO of {subject} is"\n}\n'
        'edit ceo("Twitter") -> "Linda Yaccarino"\n'
        'backend ike { template "mine.jinja" }\n', encoding="utf-8")
    (tmp_path / "mine.jinja").write_text("{{ fact }}\n{{ query }}", encoding="utf-8")
    said: list[str] = []
    compile_spec(spec, "ike", out=tmp_path / "turns", progress=said.append)
    assert any("`template` shapes completion requests" in line for line in said)
    said.clear()  # with chat_turns off the template shapes chat requests too: nothing to say
    compile_spec(spec, "ike", out=tmp_path / "one", overrides={"chat_turns": "false"}, progress=said.append)
    assert not any("`template`" in line for line in said)
    assert load_plugin(tmp_path / "one").chat_turns is False and load_plugin(tmp_path / "turns").chat_turns


def test_verify_through_the_api(stack, tmp_path):
    from editspec.verify.api import verify_api

    spec = tmp_path / "twitter.edit"
    spec.write_text(
        'relation ceo {\n  prompt "The CEO of {subject} is"\n  question "Who is the CEO of {subject}?"\n}\n'
        'edit ceo("Twitter") -> "Linda Yaccarino" {\n  keep { ceo("Apple") -> "Tim Cook"\n'
        '    "The capital of France is" -> "Paris" }\n}\nexpect { efficacy >= 1.0 }\n', encoding="utf-8")
    plugin = load_plugin(compile_spec(spec, "retrieval", out=tmp_path / "artifact"))
    unedited = verify_api(spec, stack["upstream"])
    edited = verify_api(spec, stack["upstream"], artifact=plugin)
    totals = {metric: total.value for (metric, protocol), total in edited.totals.items()}
    before = {metric: total.value for (metric, protocol), total in unedited.totals.items()}
    assert {p for (_, p) in edited.totals} == {"generate"}
    assert totals["efficacy"] == 1.0 and before["efficacy"] < 1.0
    assert edited.exit_code == 0 and unedited.exit_code == 1
    # Keep prompts are outside every edit's scope: answered exactly as before (whether or not
    # the small model knew the answer in the first place).
    locality = [r for r in edited.results if r.check.metric == "locality"]
    assert len(locality) == 2 and all(r.scores["agrees_with_unedited"] for r in locality)
    assert totals["locality"] == before["locality"]
    # The same through the command line: exit codes and the protocol in the report.
    from click.testing import CliRunner

    from editspec.cli import main

    runner = CliRunner()
    cli = runner.invoke(main, ["verify", str(spec), "--artifact", str(tmp_path / "artifact"), "--upstream", stack["upstream"]])
    assert cli.exit_code == 0, cli.output
    assert "generate" in cli.output
    assert runner.invoke(main, ["verify", str(spec), "--no-edit", "--upstream", stack["upstream"]]).exit_code == 1
    assert runner.invoke(main, ["verify", str(spec), "--upstream", stack["upstream"]]).exit_code == 2


def test_requests_embed_like_the_keys_they_are_routed_to():
    """Live requests use the fast query encoder; its vectors must agree with the float32 keys."""
    import numpy as np

    from editspec.model.embed import load_embedder

    embedder = load_embedder()
    texts = ["The CEO of Twitter is", "Who runs Twitter?", "The capital of France is",
             "Angola belongs to the continent of", "Michael Jordan plays the sport of"]
    keys, queries = embedder.encode(texts), embedder.encode_query(texts)
    assert queries.dtype == np.float32 and queries.shape == keys.shape
    assert np.allclose(np.linalg.norm(queries, axis=1), 1.0, atol=1e-5)
    assert (keys * queries).sum(axis=1).min() > 0.999
    # Each request's nearest key is its own text, as with the float32 encoder.
    assert (queries @ keys.T).argmax(axis=1).tolist() == list(range(len(texts)))


def test_the_traced_request_encoder_is_the_model_bit_for_bit():
    """The traced query encoder gives the untraced model's hidden states for any batch and length."""
    import random

    import torch

    from editspec.model.embed import TracedEncoder, _bfloat16_copy, load_embedder
    from editspec.model.precision import native_bfloat16

    embedder = load_embedder()
    traced = embedder.query_model()
    assert isinstance(traced, TracedEncoder)
    model = _bfloat16_copy(embedder.model) if native_bfloat16() else embedder.model   # what was traced
    rng = random.Random(0)
    words = "the of Twitter CEO who runs capital city a number Tesla Microsoft Côte d'Ivoire".split()
    for size in (1, 2, 5, 33):
        texts = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 300))) for _ in range(size)]
        batch = embedder.tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.inference_mode():
            expected = model(**batch).last_hidden_state
            assert torch.equal(traced(**batch).last_hidden_state, expected), size


def test_compile_command_builds_a_plugin(tmp_path):
    """`editspec compile --backend retrieval` from the command line (its manifest names no model)."""
    from click.testing import CliRunner

    from editspec.cli import main

    out = tmp_path / "lead.retrieval"
    result = CliRunner().invoke(main, ["compile", SPEC, "--backend", "retrieval", "-o", str(out), "--no-lock"])
    assert result.exit_code == 0, result.output
    assert f"{out}: 3 edit(s) with retrieval for API models" in result.output
    assert load_plugin(out).kind == "retrieval"
