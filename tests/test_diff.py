"""`editspec diff` on a temporary git repository: added, removed and changed edits, text and JSON."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from editspec.cli import main
from editspec.lang.resolve import load_spec
from editspec.gitflow.diff import diff_specs

RELATIONS = """relation capital {
  prompt     "The capital of {subject} is"
  paraphrase "{subject}'s capital city is"
}
"""
SPEC = """import "relations/common.edit"

edit capital("Australia") -> "Sydney" {
  was "Canberra"
  scope { "Australia's seat of government is in" }
  keep { capital("Canada") -> "Ottawa" }
}

edits capital {
  "Brazil" -> "Rio de Janeiro" was "Brasília"
  "Myanmar" -> "Yangon"
}

expect { efficacy >= 0.90 }
"""


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                   check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path, monkeypatch):
    (tmp_path / "specs/relations").mkdir(parents=True)
    (tmp_path / "specs/relations/common.edit").write_text(RELATIONS)
    (tmp_path / "specs/capitals.edit").write_text(SPEC)
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "specs")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(*args: str):
    return CliRunner().invoke(main, ["diff", *args])


def change_spec(repo: Path) -> None:
    text = SPEC.replace('"Australia") -> "Sydney"', '"Australia") -> "Melbourne" | "Melb"')
    text = text.replace('  "Myanmar" -> "Yangon"\n', '  "Peru" -> "Cusco"\n')
    text = text.replace('keep { capital("Canada") -> "Ottawa" }', 'keep { capital("Ghana") -> "Accra" }')
    text = text.replace("efficacy >= 0.90", "efficacy >= 0.95")
    (repo / "specs/capitals.edit").write_text(text)


def test_text_diff_names_added_removed_and_changed_edits(repo):
    change_spec(repo)
    result = run()
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "specs/capitals.edit (modified): edits: 1 added, 1 removed, 1 changed; expect: 1 changed" in lines
    assert '  + edit capital("Peru") -> "Cusco"' in lines
    assert '  - edit capital("Myanmar") -> "Yangon"' in lines
    assert '  ~ edit capital("Australia")' in lines
    assert '      new object: "Sydney" -> "Melbourne" | "Melb"' in lines
    assert '      keep + capital("Ghana") -> "Accra"' in lines
    assert '      keep - capital("Canada") -> "Ottawa"' in lines
    assert "      threshold: >= 0.9 -> >= 0.95" in lines
    assert not any("Brazil" in line for line in lines)  # unchanged edits are not mentioned


def test_json_diff(repo):
    change_spec(repo)
    result = run("HEAD", "specs/capitals.edit", "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    (spec,) = data["specs"]
    assert (spec["path"], spec["status"], spec["changed"]) == ("specs/capitals.edit", "modified", True)
    assert spec["counts"]["edits"] == {"added": 1, "removed": 1, "changed": 1}
    (changed,) = spec["changes"]["edits"]["changed"]
    assert changed["key"] == 'capital("Australia")'
    assert changed["changes"]["new object"] == {"old": '"Sydney"', "new": '"Melbourne" | "Melb"'}
    assert len(data["commit"]) == 40


def test_formatting_and_reordering_are_not_changes(repo):
    spec = repo / "specs/capitals.edit"
    spec.write_text("# a comment\n" + SPEC.replace("expect { efficacy >= 0.90 }", "").replace("  ", "    ")
                    + "\nexpect {\n  efficacy >= 0.9\n}\n")
    result = run("--exit-code")
    assert result.exit_code == 0, result.output
    assert "specs/capitals.edit (unchanged): no semantic change" in result.stdout


def test_exit_code_flag_reports_a_change(repo):
    change_spec(repo)
    assert run("--exit-code").exit_code == 1


def test_old_imports_are_read_from_the_revision(repo):
    (repo / "specs/relations/common.edit").write_text(RELATIONS.replace("{subject}'s capital city is",
                                                                        "The seat of government of {subject} is"))
    result = run("specs/capitals.edit")
    assert result.exit_code == 0, result.output
    assert '      prompts + "The seat of government of Brazil is"' in result.stdout
    assert '      prompts - "Brazil\'s capital city is"' in result.stdout
    # With no SPEC, the changed relations file is compared, and the spec that imports it.
    everything = run().stdout
    assert "~ relation capital" in everything and "specs/capitals.edit (modified)" in everything


def test_new_and_deleted_specs(repo):
    (repo / "specs/new.edit").write_text('import "relations/common.edit"\nedit capital("Chile") -> "Valparaíso"\n')
    (repo / "specs/capitals.edit").unlink()
    result = run("--format", "json")
    assert result.exit_code == 0, result.output
    statuses = {s["path"]: (s["status"], s["counts"].get("edits")) for s in json.loads(result.stdout)["specs"]}
    assert statuses["specs/new.edit"] == ("added", {"added": 1, "removed": 0, "changed": 0})
    assert statuses["specs/capitals.edit"] == ("deleted", {"added": 0, "removed": 3, "changed": 0})


def test_older_revision(repo):
    change_spec(repo)
    git(repo, "commit", "-q", "-am", "move capitals")
    assert "no semantic change" in run("HEAD", "specs/capitals.edit").stdout
    assert '+ edit capital("Peru")' in run("HEAD~1", "specs/capitals.edit").stdout


@pytest.mark.parametrize("args,message", [(("nosuchrev",), "unknown revision `nosuchrev`"),
                                          (("HEAD", "specs/missing.edit"), "neither in the working tree nor at HEAD")])
def test_mistakes_exit_2(repo, args, message):
    result = run(*args)
    assert result.exit_code == 2 and message in result.stderr


def test_broken_working_copy_is_reported_with_its_position(repo):
    (repo / "specs/capitals.edit").write_text(SPEC.replace('"Myanmar" -> "Yangon"', '"Myanmar" -> '))
    result = run()
    assert result.exit_code == 2 and "capitals.edit:" in result.stderr


def test_outside_a_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run()
    assert result.exit_code == 2 and "not inside a git repository" in result.stderr


def test_blocks_matched_by_name():
    old = load_spec("a.edit", text='canonical "c" { example "P" -> " a" }\nforget "f" { prompt "x"  never "1" }\n'
                                   'backend rome { layer 5 }\n')
    new = load_spec("a.edit", text='canonical "c" { example "P" -> " b" }\nforget "f" { prompt "x"  never "2" }\n'
                                   'backend rome { layer 5  v_lr 0.5 }\n')
    diff = diff_specs(old, new)
    assert diff.canonical.changed[0].changes == {"example": {"old": '"P" -> " a"', "new": '"P" -> " b"'}}
    assert diff.forget.changed[0].changes == {"never": {"added": ['"2"'], "removed": ['"1"']}}
    assert diff.backends.changed[0].changes == {"v_lr": {"old": None, "new": "0.5"}}
    assert not diff_specs(old, old)


def test_preserve_files_elsewhere_in_the_tree_are_read_from_the_revision(repo):
    (repo / "data").mkdir()
    (repo / "data/general.txt").write_text("Some general text.\n")
    spec = repo / "specs/capitals.edit"
    spec.write_text(SPEC + '\npreserve {\n  file "../data/general.txt"\n  budget loss_increase <= 0.1%\n}\n')
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "preserve")
    spec.write_text(spec.read_text().replace("0.1%", "0.5%"))
    result = run("specs/capitals.edit")
    assert result.exit_code == 0, result.output
    assert "  + preserve budget loss_increase <= 0.005" in result.stdout
    assert "  - preserve budget loss_increase <= 0.001" in result.stdout
