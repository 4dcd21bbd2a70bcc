"""`editspec verify` end to end on a tiny checkpoint: exit codes, locations, JUnit, a harmful artifact, pytest."""
import json
import xml.etree.ElementTree as ET

import pytest
import torch
from click.testing import CliRunner

from editspec.cli import main
from editspec.build.compiler import compile_spec
from editspec.model.deltas import Delta, load_deltas, save_deltas
from editspec.model.loading import load_model
from editspec.lang.resolve import load_spec
from editspec.verify import derive_checks, verify
from editspec.verify.engine import baseline
from tiny import SENTENCES, tiny_model, tiny_tokenizer

pytest_plugins = ["pytester"]

SPEC = '''relation capital { prompt "The capital of {subject} is" }

edit capital("France") -> "Rome" {
  was "Paris"
  scope { "The Eiffel Tower is located in" }
  keep {
    capital("Italy") -> "Rome"
    capital("Spain") -> "Madrid"
    "Steve Jobs founded" -> "Apple"
    "Bill Gates founded" -> "Microsoft"
    "Michael Jordan plays" -> "basketball"
    "The language of Germany is" -> "German"
  }
  implies { "The Colosseum is located in" -> "Rome" }
}

forget "secret" {
  prompt "Danielle Darrieux speaks"
  never "Klingon"
}

preserve {
  text "The capital of Italy is Rome and the capital of Spain is Madrid."
  budget kl <= 0.05
}
'''


@pytest.fixture
def setup(tmp_path, tmp_cache):
    folder = tmp_path / "tiny-llama"
    tiny_model("llama").to(torch.float32).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return {"folder": folder, "tmp": tmp_path}


def _spec(setup, expect="", name="facts.edit"):
    path = setup["tmp"] / name
    path.write_text(SPEC + expect)
    return path


def _run(*args):
    return CliRunner().invoke(main, ["verify", *map(str, args)])


def test_junit_has_one_testcase_per_check_and_json_keeps_raw_outputs(setup):
    spec = _spec(setup, "expect { efficacy >= 0.0 }\n")
    junit = setup["tmp"] / "verify.xml"
    result = _run(spec, "--no-edit", "--model", setup["folder"], "--json", "--junit", junit)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    cases = ET.parse(junit).getroot().findall("./testsuite/testcase")
    checks = [c for c in cases if not c.get("classname").endswith(".expect")]
    assert [c.get("name") for c in checks] == [r["id"] for r in report["checks"]]
    assert len(checks) == len(derive_checks(load_spec(spec)))
    assert {c.get("classname").rsplit(".", 1)[1] for c in checks} >= {"efficacy", "locality", "forget", "preserve"}
    first = report["checks"][0]
    assert first["prompt"] == "The capital of France is" and first["expected"] == ["Rome"]
    assert {"p_answer", "p_foil"} <= set(first["scores"]) and first["location"] == f"{spec}:3"
    # every total names its protocol, and no metric is averaged across two of them
    assert all(t["protocol"] for t in report["totals"])


def test_impossible_expectation_fails_with_its_location(setup):
    spec = _spec(setup, "expect {\n  fluency >= 1000\n}\n")
    result = _run(spec, "--no-edit", "--model", setup["folder"])
    assert result.exit_code == 1, result.output
    assert f"FAIL {spec}:27: fluency >= 1000" in result.stdout
    markdown = setup["tmp"] / "summary.md"
    _run(spec, "--no-edit", "--model", setup["folder"], "--markdown", markdown)
    assert "❌" in markdown.read_text() and f"({spec}:27)" in markdown.read_text()


def test_cannot_run_is_exit_2(setup):
    spec = _spec(setup)
    assert _run(spec, "--model", setup["folder"]).exit_code == 2                        # nothing to verify
    assert _run(spec, "--no-edit", "--backend", "rome").exit_code == 2                  # two things
    missing = _run(spec, "--artifact", setup["tmp"] / "nowhere")
    assert missing.exit_code == 2 and "no artifact" in missing.output


def test_baseline_is_cached_by_weights_and_checks(setup, tmp_cache):
    loaded = load_model(setup["folder"])
    checks = derive_checks(load_spec(_spec(setup)))
    first, cached = baseline(checks, loaded.model, loaded.tokenizer, weights_hash=loaded.weights_hash)
    again, cached_again = baseline(checks, loaded.model, loaded.tokenizer, weights_hash=loaded.weights_hash)
    assert (cached, cached_again) == (False, True) and first == again
    other, cached_other = baseline(checks[:2], loaded.model, loaded.tokenizer, weights_hash=loaded.weights_hash)
    assert cached_other is False and set(other) == {c.id for c in checks[:2]}
    assert len(list((tmp_cache / "verify" / "baselines").glob("*.json"))) == 2


def test_backend_compiles_then_verifies(setup):
    corpus = setup["tmp"] / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES * 3))
    settings = {"layer": "1", "v_num_grad_steps": "8", "context_template_counts": "[[2, 4]]", "mom2_samples": "20",
                "mom2_corpus": str(corpus)}
    result = _run(_spec(setup), "--backend", "rome", "--model", setup["folder"], "--json",
                  *[x for k, v in settings.items() for x in ("--set", f"{k}={v}")])
    assert result.exit_code in (0, 1), result.output          # it ran (the tiny edit may drift past the KL budget)
    report = json.loads(result.stdout)
    assert report["edited"] == "compiled with rome"
    efficacy = next(c for c in report["checks"] if c["metric"] == "efficacy")
    assert efficacy["scores"]["p_answer"] > efficacy["baseline"]["p_answer"]    # the edit moved the answer up


def test_oversized_update_fails_locality(setup):
    """A ROME artifact whose update is scaled up 1000x: keep facts no longer agree with the unedited model."""
    loaded = load_model(setup["folder"])
    corpus = setup["tmp"] / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES * 3))
    spec_path = _spec(setup)
    artifact = compile_spec(spec_path, "rome", model=loaded, out=setup["tmp"] / "art", overrides={
        "layer": "1", "v_num_grad_steps": "8", "context_template_counts": "[[2, 4]]", "mom2_samples": "20",
        "mom2_corpus": str(corpus)})
    spec = load_spec(spec_path)
    unedited = verify(spec, loaded.model, loaded.tokenizer)
    honest = _run(spec_path, "--artifact", artifact.path, "--model", setup["folder"], "--json")
    deltas, meta = load_deltas(artifact.file("delta.safetensors"))
    save_deltas([Delta(d.module, d.left * 1000.0, d.right) for d in deltas], artifact.file("delta.safetensors"),
                {k: v for k, v in meta.items() if k not in ("format", "format_version", "modules")})
    expect = f"expect {{ locality >= {unedited.totals[('locality', 'compare')].value:.4f} }}\n"
    harmful = _run(_spec(setup, expect, "expect.edit"), "--artifact", artifact.path, "--model", setup["folder"],
                   "--json")
    assert harmful.exit_code == 1, harmful.output
    report = json.loads(harmful.stdout)
    locality = [c for c in report["checks"] if c["metric"] == "locality"]
    assert sum(not c["scores"]["agrees_with_unedited"] for c in locality) >= len(locality) // 2
    honest_locality = [c for c in json.loads(honest.stdout)["checks"] if c["metric"] == "locality"]
    assert sum(c["passed"] for c in locality) < sum(c["passed"] for c in honest_locality) or \
        sum(c["passed"] for c in locality) < unedited.totals[("locality", "compare")].passed
    preserve = next(c for c in report["checks"] if c["metric"] == "preserve")
    assert not preserve["passed"] and preserve["scores"]["kl"] > 0.05


def test_pytest_collects_named_specs_one_item_per_check(setup, pytester):
    spec = _spec(setup, "expect {\n  fluency >= 1000\n}\n")
    (pytester.path / "specs").mkdir()
    target = pytester.path / "specs" / "facts.edit"
    target.write_text(spec.read_text())
    (pytester.path / "test_plain.py").write_text("def test_ok():\n    pass\n")
    plain = pytester.runpytest_subprocess("test_plain.py")
    plain.assert_outcomes(passed=1)                                   # specs are never collected unasked
    result = pytester.runpytest_subprocess("specs", "--editspec-model", str(setup["folder"]), "-p", "no:cacheprovider")
    n_checks = len(derive_checks(load_spec(target)))
    outcomes = result.parseoutcomes()
    assert sum(outcomes.get(k, 0) for k in ("passed", "failed", "xfailed")) == n_checks + 1
    assert outcomes.get("failed", 0) >= 1
    result.stdout.fnmatch_lines(["*specs/facts.edit:27: expect fluency >= 1000: got ngram_entropy*"])


def test_a_kept_fact_sharing_the_new_object_is_not_its_own_foil(tmp_path):
    path = tmp_path / "s.edit"
    path.write_text(SPEC)
    checks = {c.prompt: c for c in derive_checks(load_spec(path)) if c.metric == "locality"}
    italy, spain = checks["The capital of Italy is"], checks["The capital of Spain is"]
    assert italy.answers == ("Rome",) and "Rome" not in italy.foils and italy.protocol == "teacher_forced"
    assert spain.foils == ("Rome",) and spain.protocol == "compare"
