"""The lock with the real compiler on a tiny model: compile, lock, add an edit, build on the
locked artifact in place, lock again; status follows each step."""
import torch

from editspec.build.compiler import compile_spec
from editspec.gitflow.lock import incremental_base, lock_status, record_artifact
from editspec.model.loading import load_model
from test_compile import TINY
from tiny import SENTENCES, tiny_model, tiny_tokenizer

SPEC = 'relation capital { prompt "The capital of {subject} is" }\nedit capital("France") -> "Rome" { was "Paris" }\n'


def test_added_edit_builds_on_the_locked_artifact(tmp_path, tmp_cache, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny_model("llama").to(torch.float32).save_pretrained("model")
    tiny_tokenizer().save_pretrained("model")
    (tmp_path / "corpus.txt").write_text("\n".join(SENTENCES * 3))
    (tmp_path / "specs").mkdir()
    spec = tmp_path / "specs/facts.edit"
    spec.write_text(SPEC)
    overrides = {**TINY["alphaedit"], "mom2_samples": "20", "mom2_corpus": str(tmp_path / "corpus.txt")}
    model = load_model("model")

    first = compile_spec("specs/facts.edit", "alphaedit", model=model, out="build/facts", overrides=overrides)
    lock = record_artifact(first, overrides=overrides)
    assert [s.state for s in lock_status(lock)] == ["current"]

    spec.write_text(SPEC + 'edit capital("Italy") -> "Madrid"\n')
    (status,) = lock_status(lock)
    assert status.state == "stale" and status.build_on == "build/facts"
    base = incremental_base("specs/facts.edit", "alphaedit", out="build/facts")
    second = compile_spec("specs/facts.edit", "alphaedit", model=model, out="build/facts", overrides=overrides, on=base)
    assert [e["stage"] for e in second.manifest["edits"]] == [1, 2]
    record_artifact(second, overrides=overrides)
    assert [s.state for s in lock_status(lock)] == ["current"]

    spec.write_text(SPEC.replace('"Rome"', '"Lyon"'))  # a changed edit: only from the base model
    (status,) = lock_status(lock)
    assert status.state == "stale" and status.build_on is None
    assert incremental_base("specs/facts.edit", "alphaedit") is None
