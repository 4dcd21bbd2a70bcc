"""The pre-commit hook definitions: they parse, select .edit files, and the commands they name
pass a clean spec and fail an unformatted or invalid one, run as pre-commit runs them (the
entry, then the changed files' names)."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parent.parent
HOOKS = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text(encoding="utf-8"))
SCRIPT = Path(sys.executable).with_name("editspec")  # the console script pyproject installs

CLEAN = 'relation city {\n  prompt "The {subject} is in the city of"\n}\n\nedit city("Eiffel Tower") -> "Rome" was "Paris"\n'
UNFORMATTED = 'relation city { prompt "The {subject} is in the city of" }\nedit city("Eiffel Tower")->"Rome" { was "Paris" }\n'
INVALID = CLEAN + '\nedit city("Eiffel Tower") -> "Lima"\n'


def test_the_hooks_are_defined():
    assert [h["id"] for h in HOOKS] == ["editspec-fmt", "editspec-check"]
    for hook in HOOKS:
        assert {"id", "name", "entry", "language", "files", "description"} <= set(hook)
        assert hook["language"] == "python"  # pre-commit installs editspec from the repository
        assert shlex.split(hook["entry"])[0] == "editspec"


@pytest.mark.parametrize("path, selected", [("specs/a.edit", True), ("a.edit", True), ("a.edit.bak", False),
                                            ("edit.py", False), ("notes/a.EDIT.md", False)])
def test_hooks_select_edit_files(path, selected):
    for hook in HOOKS:
        assert bool(re.search(hook["files"], path)) is selected


def _run(hook_id: str, *files: Path) -> subprocess.CompletedProcess:
    if not SCRIPT.exists():
        pytest.skip(f"the editspec console script is not installed next to {sys.executable}")
    (hook,) = [h for h in HOOKS if h["id"] == hook_id]
    command = [str(SCRIPT), *shlex.split(hook["entry"])[1:], *map(str, files)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("hook_id, content, code, says", [
    ("editspec-fmt", CLEAN, 0, ""),
    ("editspec-fmt", UNFORMATTED, 1, "need formatting"),
    ("editspec-fmt", INVALID, 0, ""),          # formatting does not judge meaning: the check hook does
    ("editspec-check", CLEAN, 0, ""),
    ("editspec-check", UNFORMATTED, 0, ""),
    ("editspec-check", INVALID, 2, "conflicting edits"),
])
def test_entry_on_a_sample_file(tmp_path, hook_id, content, code, says):
    good, sample = tmp_path / "good.edit", tmp_path / "sample.edit"
    good.write_text(CLEAN, encoding="utf-8")
    sample.write_text(content, encoding="utf-8")
    result = _run(hook_id, good, sample)
    assert result.returncode == code, result.stdout + result.stderr
    assert says in result.stdout + result.stderr
    if code == 0:
        assert result.stdout + result.stderr == ""  # a passing hook is quiet
    assert sample.read_text(encoding="utf-8") == content  # a hook changes nothing
