"""The check-kind registry and the observers: one engine, a new kind in one place."""
from types import SimpleNamespace

import pytest
import torch

from editspec.lang.resolve import load_spec
from editspec.verify import kinds
from editspec.verify.checks import Check
from editspec.verify.engine import run, verify
from editspec.verify.judge import CheckResult
from editspec.verify.kinds import CheckKind, kind_of, register
from editspec.verify.observers import ApiObserver, api_max_tokens
from editspec.verify.report import expected_text, terminal
from tiny import tiny_model, tiny_tokenizer

SPEC = 'relation capital { prompt "The capital of {subject} is" }\nedit capital("France") -> "Rome" was "Paris"\n' \
       'preserve { text "The capital of Italy is Rome." }\n'


def test_every_metric_has_one_kind():
    from editspec.lang.metrics import METRICS

    assert {m: kind_of(Check(id="x", metric=m, protocol="", file="", line=1, column=1)).name for m in METRICS} == {
        "efficacy": "facts", "generalization": "facts", "locality": "facts", "portability": "facts",
        "canonical": "canonical", "hard_negatives": "canonical", "forget": "forget", "fluency": "fluency"}
    with pytest.raises(ValueError, match="registered twice"):
        register(kinds.KINDS["facts"])
    with pytest.raises(ValueError, match="belong to 'facts'"):
        register(CheckKind("again", ("efficacy",), *(lambda *a: None,) * 4))


def test_a_new_kind_is_one_registry_entry(monkeypatch):
    """A toy kind (is anything generated after the subject?) runs through derive, observe, judge and render."""
    def derive(spec, plans):
        return [Check(id=f"{e.id}/toy", metric="toy", protocol="generate", file=e.span.file, line=e.span.line,
                      column=e.span.column, prompt=e.subject, answers=("x",), max_new_tokens=3) for e in spec.edits]

    def observe(checks, observer, refs):
        return {i: {"text": t} for i, t in observer.generated(checks).items()}

    def judge(check, seen, base, tokenizer):
        return CheckResult(check, bool(seen["text"]), float(bool(seen["text"])), seen["text"], {}, base)

    toy = CheckKind("toy", ("toy",), derive=derive, observe=observe, judge=judge, expected=lambda c: "some text")
    monkeypatch.setitem(kinds.KINDS, "toy", toy)
    monkeypatch.setitem(kinds._BY_METRIC, "toy", toy)
    report = verify(load_spec("t.edit", text=SPEC), tiny_model("llama", dtype=torch.float32), tiny_tokenizer())
    mine = [r for r in report.results if r.check.metric == "toy"]
    assert len(mine) == 1 and mine[0].passed and expected_text(mine[0]) == "some text"
    assert "toy" in terminal(report) and report.results[-1] is mine[0]              # registry order is report order


class FakeAPI:
    """An OpenAI-shaped client that echoes what it was asked."""

    def __init__(self):
        self.asked = []
        self.completions = SimpleNamespace(create=self._complete)
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self._chat))

    def _complete(self, **kw):
        self.asked.append(("completion", kw["prompt"], kw["max_tokens"]))
        return SimpleNamespace(choices=[SimpleNamespace(text=" Rome. Yes.")])

    def _chat(self, **kw):
        self.asked.append(("chat", kw["messages"], kw["max_tokens"]))
        return SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(content="It is Rome."))])


def test_the_api_observer_runs_in_the_same_engine_and_skips_what_it_cannot_observe():
    from editspec.verify.checks import derive_checks

    spec = load_spec("t.edit", text=SPEC + "expect { efficacy[chat] >= 1.0 }\n")
    client = FakeAPI()
    checks = derive_checks(spec, protocol="generate")
    report = run(spec, checks, ApiObserver(client, "m", workers=2), model_name="m")
    got = {(r.check.metric, r.check.protocol): r for r in report.results}
    assert set(got) == {("efficacy", "generate"), ("efficacy", "chat")}         # preserve and fluency left out
    assert report.seconds["skipped_checks"] == len(checks) - 2 and report.ok
    assert ("chat", [{"role": "user", "content": "The capital of France is"}], 48) in client.asked
    assert got[("efficacy", "generate")].scores["sentence"] == "Rome."
    forget = Check(id="f", metric="forget", protocol="generate", file="", line=1, column=1, answers=("Klingon",))
    assert api_max_tokens(forget) == 8 and api_max_tokens(checks[0]) == 48


def test_fluency_samples_a_few_prompts_several_times(tmp_path):
    """A spec with one edit prompt is sampled FLUENCY_SAMPLES times (seeded, distinct draws); with
    draws=1 the sampler gives what it gave before, and draws keep prompt order."""
    from editspec.verify.checks import FLUENCY_SAMPLES
    from editspec.verify.protocols import generate_texts

    model, tok = tiny_model("llama", dtype=torch.float32), tiny_tokenizer()
    prompts = ["The capital of France is", "Steve Jobs founded"]
    once = generate_texts(model, tok, prompts, max_new_tokens=8, sample_top_k=5, seed=3)
    again = generate_texts(model, tok, prompts, max_new_tokens=8, sample_top_k=5, seed=3, draws=1)
    assert once == again
    four = generate_texts(model, tok, prompts, max_new_tokens=8, sample_top_k=5, seed=3, draws=4)
    assert len(four) == 8 and four == generate_texts(model, tok, prompts, max_new_tokens=8, sample_top_k=5, seed=3,
                                                     draws=4)
    assert len(set(four[:4])) > 1 and len(set(four[4:])) > 1       # each row draws its own tokens
    greedy = generate_texts(model, tok, prompts, max_new_tokens=8, draws=4)
    assert greedy == generate_texts(model, tok, prompts, max_new_tokens=8)   # draws only apply to sampling

    spec_text = ('relation capital { prompt "The capital of {subject} is" }\n'
                 'edit capital("France") -> "Rome" { was "Paris" }\n')
    path = tmp_path / "one.edit"
    path.write_text(spec_text)
    report = verify(load_spec(path), model, tok)
    fluency = next(r for r in report.results if r.check.metric == "fluency")
    assert len(fluency.scores["texts"]) == FLUENCY_SAMPLES == len(fluency.scores["entropies"])
    assert len(set(fluency.scores["texts"])) > 1
