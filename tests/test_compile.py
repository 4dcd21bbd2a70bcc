"""compile / apply / load_edited on a tiny checkpoint: the artifact contract every weight backend keeps."""
import json
import os

import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModelForCausalLM

import editspec
from editspec.build.artifact import DELTAS, IR_FILE, MANIFEST, read_artifact
from editspec.cli import main
from editspec.build.compiler import compile_spec, parse_setting_value
from editspec.errors import EditspecError
from editspec.families.locate.backend import edit_requests
from editspec.model.loading import load_model
from editspec.lang.resolve import load_spec
from tiny import target_logprob as _logprob, tiny_tokenizer, tiny_workspace

SPEC = '''
relation capital {
  prompt "The capital of {subject} is"
}
relation plays { prompt "{subject} plays" }

edit capital("France") -> "Rome" { was "Paris" }
edit plays("Michael Jordan") -> "football" { was "basketball" }
'''
MORE = 'edit capital("Italy") -> "Madrid" { was "Rome" }\n'

# Small settings for a 3-layer model; the corpus is a file so no package is fetched.
TINY = {
    "rome": {"layer": "1", "v_num_grad_steps": "8", "context_template_counts": "[[2, 4]]"},
    "memit": {"layers": "0..1", "v_num_grad_steps": "8", "context_template_counts": "[[2, 4]]", "mom2_update_weight": "1"},
    "alphaedit": {"layers": "0..1", "v_num_grad_steps": "8", "context_template_counts": "[[2, 4]]",
                  "threshold_mode": "relative", "nullspace_threshold": "0.5", "l2": "0.1"},
    "ultraedit": {"layers": "1..2", "step": "2.0", "ridge": "0.01", "passes": "2", "mom2_weight": "1", "keep_weight": "1"},
}
STATISTICS = {"rome", "memit", "alphaedit", "ultraedit"}  # backends that read second moments C
BACKENDS = list(TINY)


@pytest.fixture
def setup(tmp_path, tmp_cache):
    folder, corpus, spec = tiny_workspace(tmp_path, SPEC)
    return {"model": load_model(folder), "folder": folder, "spec": spec, "tmp": tmp_path,
            "overrides": lambda backend: {**TINY[backend], **({"mom2_samples": "20", "mom2_corpus": str(corpus)}
                                                              if backend in STATISTICS else {}),
                                          **({"preserve_corpus": str(corpus)} if backend == "ultraedit" else {})}}


def _compile(setup, backend, out="art", **kw):
    return compile_spec(setup["spec"], backend, model=setup["model"], out=setup["tmp"] / out,
                        overrides=setup["overrides"](backend), **kw)


def _files_digest(folder):
    from editspec.cache import sha256_file

    return {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("backend", BACKENDS)
def test_artifact_contract(setup, backend):
    base_files = _files_digest(setup["folder"])
    model, tok = setup["model"].model, setup["model"].tokenizer
    before = {k: v.clone() for k, v in model.state_dict().items()}
    old = _logprob(model, tok, "The capital of France is", "Rome")

    artifact = _compile(setup, backend)
    assert {MANIFEST, IR_FILE, DELTAS} <= {p.name for p in artifact.path.iterdir()}
    manifest = artifact.manifest
    assert manifest["backend"]["name"] == backend and manifest["seed"] == 0
    assert manifest["model"]["weights_hash"] == setup["model"].weights_hash
    assert [e["subject"] for e in manifest["edits"]] == ["France", "Michael Jordan"]
    assert manifest["edits"][0]["span"]["line"] == 7
    assert manifest["spec"]["ir_hash"] == load_spec(setup["spec"]).content_hash()
    config = manifest["backend"]["config"]
    assert all(config[key] is not None for key in TINY[backend])  # the settings compiled are recorded
    assert backend == "ultraedit" or config["v_num_grad_steps"] == 8
    # Compiling never changes the model in memory or on disk.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    with editspec.load_edited(setup["model"], artifact) as edited:
        assert _logprob(edited.model, tok, "The capital of France is", "Rome") > old + 1.0
        assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # exact inverse

    out = setup["tmp"] / "checkpoint"
    result = CliRunner().invoke(main, ["apply", str(artifact.path), "-o", str(out), "--model", str(setup["folder"])])
    assert result.exit_code == 0, result.output
    merged = AutoModelForCausalLM.from_pretrained(out)
    with editspec.load_edited(model, artifact):
        expected = {k: v.clone() for k, v in model.state_dict().items()}
    assert all(torch.equal(expected[k], v) for k, v in merged.state_dict().items())
    assert json.loads((out / "editspec-artifact.json").read_text())["payload"] == manifest["payload"]
    assert _files_digest(setup["folder"]) == base_files  # the base model's files are untouched


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_inputs_same_payload_bytes(setup, backend):
    first = _compile(setup, backend, out="a")
    second = _compile(setup, backend, out="b")
    assert (first.path / DELTAS).read_bytes() == (second.path / DELTAS).read_bytes()
    assert first.payload_hash == second.payload_hash


@pytest.mark.parametrize("backend", ["memit", "alphaedit", "ultraedit"])
def test_on_previous_compiles_only_new_edits(setup, backend):
    first = _compile(setup, backend, out="v1")
    setup["spec"].write_text(SPEC + MORE)
    second = _compile(setup, backend, out="v2", on=first.path)
    assert [e["stage"] for e in second.manifest["edits"]] == [1, 1, 2]
    assert second.manifest["based_on"]["payload_hash"] == first.payload_hash
    model, tok = setup["model"].model, setup["model"].tokenizer
    before = _logprob(model, tok, "The capital of Italy is", "Madrid")
    with editspec.load_edited(model, second):
        assert _logprob(model, tok, "The capital of Italy is", "Madrid") > before
    # Removing an edit cannot be done on top of an artifact.
    setup["spec"].write_text(SPEC.replace('edit capital("France") -> "Rome" { was "Paris" }', "") + MORE)
    with pytest.raises(EditspecError, match="no longer in the spec"):
        _compile(setup, backend, out="v3", on=second.path)
    setup["spec"].write_text(SPEC + MORE)
    with pytest.raises(EditspecError, match="nothing to compile"):
        _compile(setup, backend, out="v3", on=second.path)
    other = "rome" if backend != "rome" else "memit"
    with pytest.raises(EditspecError, match=f"compiled with `{backend}`"):
        compile_spec(setup["spec"], other, model=setup["model"], out=setup["tmp"] / "v4", on=second.path,
                     overrides=setup["overrides"](other))


def test_interrupted_compile_leaves_nothing(setup, monkeypatch):
    from editspec.backends.rome.backend import RomeBackend

    def interrupted(self, job, requests):
        raise KeyboardInterrupt

    monkeypatch.setattr(RomeBackend, "edit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _compile(setup, "rome", out="art")
    assert not (setup["tmp"] / "art").exists()
    assert not [p for p in setup["tmp"].iterdir() if p.name.startswith(".art")]


def test_nan_delta_is_never_written(setup, monkeypatch):
    from editspec.backends.rome import backend as rome_backend

    real = rome_backend.rome_deltas

    def poisoned(*args, **kwargs):
        result = real(*args, **kwargs)
        result.deltas[0].left[0, 0] = float("nan")
        return result

    monkeypatch.setattr(rome_backend, "rome_deltas", poisoned)
    with pytest.raises(EditspecError, match="NaN or inf"):
        _compile(setup, "rome", out="art")
    assert not (setup["tmp"] / "art").exists()


def test_refuses_to_replace_a_directory_that_is_not_an_artifact(setup):
    precious = setup["tmp"] / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(EditspecError, match="not an editspec artifact"):
        _compile(setup, "rome", out="precious")
    assert (precious / "thesis.tex").exists()


def test_settings_errors_point_at_their_source(setup):
    setup["spec"].write_text(SPEC + "\nbackend rome { layer -3 }\n")
    with pytest.raises(EditspecError) as error:
        compile_spec(setup["spec"], "rome", model=setup["model"], out=setup["tmp"] / "x")
    assert f"{setup['spec']}:10:16" in str(error.value) and "layer" in str(error.value)
    with pytest.raises(EditspecError, match="did you mean `layers`"):
        compile_spec(setup["spec"], "memit", model=setup["model"], out=setup["tmp"] / "x", overrides={"layer": "4"})


@pytest.mark.parametrize("text, value", [
    ("5", 5), ("0.5", 0.5), ("4..6", [4, 5, 6]), ("[1, 2]", [1, 2]), ("true", True), ("r-rome", "r-rome"),
    ('"quoted"', "quoted"), ("auto", "auto"), ("[[2, 4]]", [[2, 4]]),
])
def test_set_values_read_like_the_language(text, value):
    assert parse_setting_value(text) == value


class _NoTargetTokenizer:
    """A tokenizer with no token for the word "Bob"."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [1 for word in text.split() if word != "Bob"]}


def test_request_diagnostics_point_at_the_edit(tmp_path):
    spec_path = tmp_path / "s.edit"
    spec_path.write_text('relation r { prompt "{subject} is led by" }\nedit r("Acme") -> "Bob"\n')
    with pytest.raises(EditspecError) as error:
        edit_requests(load_spec(spec_path).edits, _NoTargetTokenizer())
    assert f"{spec_path}:2:1" in str(error.value) and "tokenises to nothing" in str(error.value)


def test_cli_compile_reports_and_exit_codes(setup):
    runner = CliRunner()
    out = setup["tmp"] / "cli-art"
    sets = [arg for key, value in setup["overrides"]("rome").items() for arg in ("--set", f"{key}={value}")]
    args = ["compile", str(setup["spec"]), "--backend", "rome", "--model", str(setup["folder"]), "-o", str(out), *sets]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "2 edit(s) with rome" in result.output and read_artifact(out).backend == "rome"
    bad = runner.invoke(main, args[:-2] + ["--set", "layer"])
    assert bad.exit_code == 2 and "KEY=VALUE" in bad.output
    unknown = runner.invoke(main, ["compile", str(setup["spec"]), "--backend", "romee"])
    assert unknown.exit_code == 2 and "did you mean `rome`" in unknown.output
    which = runner.invoke(main, ["compile", str(setup["spec"])])
    assert which.exit_code == 2 and "pass --backend" in which.output
    listing = runner.invoke(main, ["backends"])
    assert listing.exit_code == 0 and "mom2_update_weight" in listing.output


def test_not_an_artifact(tmp_path):
    with pytest.raises(EditspecError, match="no artifact"):
        read_artifact(tmp_path / "missing")
    with pytest.raises(EditspecError, match="not an editspec artifact"):
        read_artifact(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(EditspecError, match="upgrade editspec"):
        read_artifact(tmp_path)
    assert os.path.exists(tmp_path / MANIFEST)


def test_cli_compile_builds_on_the_locked_artifact_when_edits_were_only_added(setup):
    settings = "\n".join(f"  {key} {value}" for key, value in setup["overrides"]("alphaedit").items()
                         if key != "mom2_corpus")
    block = f'\nbackend alphaedit {{\n{settings}\n  mom2_corpus "{setup["tmp"] / "corpus.txt"}"\n}}\n'
    setup["spec"].write_text(SPEC + block)
    runner = CliRunner()
    out = setup["tmp"] / "build" / "facts.alphaedit"
    args = ["compile", str(setup["spec"]), "-o", str(out)]
    with_model = args + ["--model", str(setup["folder"])]
    first = runner.invoke(main, with_model)
    assert first.exit_code == 0, first.output
    assert (setup["tmp"] / "editspec.lock").is_file()
    # The lock's model is the tiny checkpoint by path: later compiles need no --model.
    setup["spec"].write_text(SPEC + MORE + block)
    second = runner.invoke(main, args)
    assert second.exit_code == 0, second.output
    assert "compiling only those" in second.output
    assert [e["stage"] for e in read_artifact(out).manifest["edits"]] == [1, 1, 2]
    status = runner.invoke(main, ["status", str(setup["tmp"])])
    assert status.exit_code == 0 and "current" in status.output, status.output
    fresh = runner.invoke(main, args + ["--fresh"])
    assert fresh.exit_code == 0 and "compiling only those" not in fresh.output
    assert [e["stage"] for e in read_artifact(out).manifest["edits"]] == [1, 1, 1]


def test_verify_and_bench_build_on_the_locked_artifact_like_compile(setup, monkeypatch):
    """verify --backend and bench compile elsewhere, but on top of `compile`'s locked artifact."""
    from editspec.bench.runner import run_bench
    from editspec.gitflow.lock import lock_status

    monkeypatch.chdir(setup["tmp"])
    settings = "\n".join(f"  {key} {value}" for key, value in setup["overrides"]("alphaedit").items()
                         if key != "mom2_corpus")
    block = f'\nbackend alphaedit {{\n{settings}\n  mom2_corpus "{setup["tmp"] / "corpus.txt"}"\n}}\n'
    setup["spec"].write_text(SPEC + block)
    runner = CliRunner()
    spec, folder = str(setup["spec"]), str(setup["folder"])
    assert runner.invoke(main, ["compile", spec, "--model", folder]).exit_code == 0   # build/facts.alphaedit
    setup["spec"].write_text(SPEC + MORE + block)
    locked = lock_status(setup["tmp"] / "editspec.lock")
    verify = runner.invoke(main, ["verify", spec, "--backend", "alphaedit", "--model", folder])
    assert verify.exit_code in (0, 1), verify.output
    assert "build/facts.alphaedit is current except for added edits" in verify.output
    fresh = runner.invoke(main, ["verify", spec, "--backend", "alphaedit", "--model", folder, "--fresh"])
    assert fresh.exit_code in (0, 1) and "compiling only those" not in fresh.output, fresh.output

    result = run_bench(spec, ["alphaedit"], model=setup["model"], out="bench")
    (run,) = result.runs
    assert run.built_on is not None and run.built_on.endswith("build/facts.alphaedit"), run.reason
    assert [e["stage"] for e in read_artifact(run.artifact).manifest["edits"]] == [1, 1, 2]
    assert run_bench(spec, ["alphaedit"], model=setup["model"], out="bench2", incremental=False).runs[0].built_on is None
    # Neither touched the locked artifact: the lock still says to build on it.
    assert [s.to_dict() for s in lock_status(setup["tmp"] / "editspec.lock")] == [s.to_dict() for s in locked]


def test_model_options_are_one_value_or_the_loose_keywords():
    from editspec.model.loading import ModelOptions

    assert ModelOptions.of(device="cpu") == ModelOptions("cpu")
    assert ModelOptions.of(ModelOptions(dtype="bfloat16")) == ModelOptions(dtype="bfloat16")
    with pytest.raises(EditspecError, match="not both"):
        ModelOptions.of(ModelOptions(dtype="bfloat16"), device="cpu")
    with pytest.raises(EditspecError, match="not both"):
        compile_spec(SPEC, "rome", model_options=ModelOptions("cpu"), dtype="float16")


def test_compile_messages_count_what_the_backend_trained():
    from editspec.build.compiler import contents

    trained = {"c1": "canonical", "f1": "forget", "f2": "forget", "e1": "edit"}
    manifest = {"edits": [{"id": "e1"}], "details": {"trained": trained}}
    assert contents(manifest) == "1 edit(s), 1 canonical example(s), 2 forget block(s)"
    assert contents({"edits": [], "details": {"trained": {"c1": "canonical"}}}) == "0 edit(s), 1 canonical example(s)"
    assert contents({"edits": [{"id": "e1"}, {"id": "e2"}], "details": {}}, 1) == "1 edit(s)"   # a plugin, or --on


def test_manifest_is_typed_and_its_schema_is_kept_in_docs():
    import json

    from editspec.build.manifest import manifest_schema

    kept = json.loads((__import__("pathlib").Path(__file__).resolve().parent.parent / "docs" / "manifest.schema.json").read_text())
    assert kept == manifest_schema(), "run `editspec ir --manifest-schema > docs/manifest.schema.json`"


def test_a_manifest_that_does_not_validate_is_refused_at_its_field(tmp_path):
    folder = tmp_path / "art"
    folder.mkdir()
    (folder / "manifest.json").write_text('{"schema_version": 1, "editspec_version": "0.1.0"}')
    with pytest.raises(EditspecError, match="not a valid manifest: `spec`"):
        read_artifact(folder)
