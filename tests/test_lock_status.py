"""`editspec lock` and `editspec status` on artifacts written the way the compiler writes them
(manifest, ir.json, payload), without a model: status before and after changes to the spec."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from editspec.build.artifact import ARTIFACT_SCHEMA_VERSION, canonical_json, payload_hash
from editspec.cli import main
from editspec.gitflow.lock import LOCK_FILE, incremental_base, read_lock
from editspec.build.registry import backends
from editspec.lang.resolve import load_spec

SPEC = """relation capital { prompt "The capital of {subject} is" }

edits capital {
  "Australia" -> "Sydney"
  "Nigeria" -> "Lagos"
}

backend rome { layer 5 }
"""


def fake_compile(spec_path: Path, out: Path, *, payload: bytes = b"delta", layer_override: int | None = None) -> Path:
    """An artifact directory as `compile_spec` lays it out, with a stand-in payload."""
    spec = load_spec(spec_path)
    config_class = backends()["rome"].config_class()
    settings = spec.backend("rome").as_dict() if spec.backend("rome") else {}
    if layer_override is not None:
        settings["layer"] = layer_override
    out.mkdir(parents=True)
    (out / "delta.safetensors").write_bytes(payload)
    (out / "ir.json").write_text(spec.to_json())
    manifest = {
        "schema_version": ARTIFACT_SCHEMA_VERSION, "editspec_version": "test",
        "spec": {"source": str(spec_path), "files": list(spec.files), "ir_hash": spec.content_hash()},
        "model": {"name": "tiny", "path": "/nowhere", "weights_hash": "w0", "model_type": "llama"},
        "backend": {"name": "rome", "config": config_class(**settings).model_dump(mode="json"),
                    "capabilities": {"white_box": True, "batch": False, "sequential": True, "reversible": True}},
        "seed": 0,
        "edits": [{"id": e.id, "relation": e.relation, "subject": e.subject, "target": e.target, "stage": 1}
                  for e in spec.edits],
        "based_on": None,
        "payload": {"files": ["delta.safetensors"], "hash": payload_hash(out, ["delta.safetensors"])},
    }
    (out / "manifest.json").write_text(canonical_json(manifest))
    return out


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("specs").mkdir()
    Path("specs/capitals.edit").write_text(SPEC)
    fake_compile(Path("specs/capitals.edit"), Path("build/capitals.rome"))
    result = run("lock", "build/capitals.rome")
    assert result.exit_code == 0, result.output
    return tmp_path


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def status(*args: str) -> tuple[int, list[dict]]:
    result = run("status", *args, "--format", "json")
    return result.exit_code, json.loads(result.stdout)


def test_lock_records_spec_edits_config_and_payload(project):
    data = read_lock(Path("specs") / LOCK_FILE)
    entry = data["artifacts"]["../build/capitals.rome"]
    assert entry["spec"] == "capitals.edit" and entry["backend"] == "rome"
    assert [e[1:] for e in entry["edits"]] == [["capital", "Australia"], ["capital", "Nigeria"]]
    assert entry["config"]["layer"] == 5 and len(entry["payload_hash"]) == 64


def test_current_after_compile(project):
    code, results = status()
    assert code == 0 and [r["state"] for r in results] == ["current"]
    assert run("status", "specs/capitals.edit").stdout.startswith("build/capitals.rome (rome, from specs/capitals.edit): current")


def test_added_edit_compiles_on_the_old_artifact(project):
    Path("specs/capitals.edit").write_text(SPEC.replace('"Nigeria" -> "Lagos"\n', '"Nigeria" -> "Lagos"\n  "Peru" -> "Cusco"\n'))
    code, (result,) = status()
    assert code == 1 and result["state"] == "stale"
    assert result["reasons"] == ['1 edit(s) added: capital("Peru")']
    assert "--on build/capitals.rome" in result["action"]
    assert result["build_on"] == "build/capitals.rome"
    assert incremental_base("specs/capitals.edit", "rome") == Path("build/capitals.rome")
    assert incremental_base("specs/capitals.edit", "rome", out="build/capitals.rome") == Path("build/capitals.rome")
    assert incremental_base("specs/capitals.edit", "memit") is None


@pytest.mark.parametrize("change,reason", [
    (('"Nigeria" -> "Lagos"', '"Nigeria" -> "Kano"'), '1 edit(s) changed: capital("Nigeria")'),
    (('  "Nigeria" -> "Lagos"\n', ""), '1 edit(s) removed: capital("Nigeria")'),
    (("layer 5", "layer 6"), "backend settings changed: layer 5 -> 6"),
])
def test_removed_or_changed_edits_and_new_settings_recompile_from_the_base_model(project, change, reason):
    Path("specs/capitals.edit").write_text(SPEC.replace(*change))
    code, (result,) = status("specs")
    assert code == 1 and result["state"] == "stale" and reason in result["reasons"]
    assert "--on" not in result["action"] and result["build_on"] is None
    assert incremental_base("specs/capitals.edit", "rome") is None


def test_formatting_is_not_a_change(project):
    Path("specs/capitals.edit").write_text("# moved things\n" + SPEC.replace("  ", "    "))
    assert status()[0] == 0


def test_missing_and_modified_artifacts(project):
    manifest = Path("build/capitals.rome/manifest.json")
    Path("build/capitals.rome/delta.safetensors").write_bytes(b"other")
    data = json.loads(manifest.read_text())
    data["payload"]["hash"] = payload_hash(Path("build/capitals.rome"), ["delta.safetensors"])
    manifest.write_text(canonical_json(data))
    assert status()[1][0]["state"] == "modified"
    for path in Path("build/capitals.rome").iterdir():
        path.unlink()
    code, (result,) = status()
    assert code == 1 and result["state"] == "missing"


def test_overrides_recorded_at_lock_time_are_not_changes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("capitals.edit").write_text(SPEC)
    fake_compile(Path("capitals.edit"), Path("out"), layer_override=7)
    assert run("lock", "out", "--set", "layer=7").exit_code == 0
    assert status()[0] == 0
    assert run("lock", "out").exit_code == 0  # locked without the override: layer 5 (spec) != 7 (artifact)
    assert "backend settings changed: layer 7 -> 5" in status()[1][0]["reasons"]


def test_status_mistakes_exit_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("a.edit").write_text(SPEC)
    result = run("status", "a.edit")
    assert result.exit_code == 2 and "no editspec.lock next to a.edit" in result.stderr
    result = run("lock", "nothing-here")
    assert result.exit_code == 2 and "no artifact at nothing-here" in result.stderr


def test_lock_status_and_diff_do_not_import_torch(project):
    import subprocess
    import sys

    subprocess.run(["git", "init", "-q"], check=True)
    code = ("import sys; from editspec.cli import main\n"
            "for args in (['lock', 'build/capitals.rome'], ['status'], ['diff']):\n"
            "    try:\n        main(args)\n    except SystemExit:\n        pass\n"
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
