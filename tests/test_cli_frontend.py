"""The front-end commands as a user runs them: exit codes, output streams, help, no torch."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from editspec import __version__
from editspec.cli import main

ROOT = Path(__file__).resolve().parent.parent
LEADERSHIP = str(ROOT / "specs/examples/leadership.edit")
GOOD = 'relation r { prompt "The r of {subject} is" }\nedit r("A") -> "B"\n'


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_version():
    result = run("--version")
    assert result.exit_code == 0 and __version__ in result.output


@pytest.mark.parametrize("command", ["check", "fmt", "ir"])
def test_every_command_teaches_by_example(command):
    result = run(command, "--help")
    assert result.exit_code == 0 and "Examples:" in result.output and "editspec " + command in result.output


def test_check_clean_spec_exits_0():
    result = run("check", LEADERSHIP)
    assert result.exit_code == 0
    assert "ok (3 edits" in result.stdout and result.stderr == ""


def test_check_error_exits_2_with_positioned_diagnostic(tmp_path):
    bad = tmp_path / "bad.edit"
    bad.write_text(GOOD + 'edit x("A") -> "B"\n')
    result = run("check", str(bad))
    assert result.exit_code == 2
    assert f"{bad}:3:6: error: unknown relation `x`" in result.stderr
    assert '  edit x("A") -> "B"\n       ^' in result.stderr
    assert "Traceback" not in result.stderr


def test_check_directory_checks_every_spec(tmp_path):
    (tmp_path / "a.edit").write_text(GOOD)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.edit").write_text("edit nope(")
    result = run("check", str(tmp_path))
    assert result.exit_code == 2
    assert "a.edit: ok" in result.stdout and "b.edit:1:11: error" in result.stderr


def test_missing_file_is_a_diagnostic_not_a_traceback(tmp_path):
    result = run("check", str(tmp_path / "nope.edit"))
    assert result.exit_code == 2 and "no such file or directory" in result.stderr


def test_debug_shows_a_traceback(tmp_path):
    result = run("--debug", "check", str(tmp_path / "nope.edit"))
    assert result.exit_code == 2 and "Traceback" in result.stderr


def test_fmt_rewrites_and_check_mode_reports(tmp_path):
    path = tmp_path / "a.edit"
    path.write_text('relation r{prompt "The r of {subject} is"}\nedit r("A")->"B"  # why\n')
    check = run("fmt", "--check", str(path))
    assert check.exit_code == 1 and "+edit r(\"A\") -> \"B\"  # why" in check.stdout
    assert run("fmt", str(path)).exit_code == 0
    assert path.read_text() == 'relation r {\n  prompt "The r of {subject} is"\n}\n\nedit r("A") -> "B"  # why\n'
    assert run("fmt", "--check", str(path)).exit_code == 0


def test_fmt_keeps_comments_aligned_in_a_column(tmp_path):
    path = tmp_path / "a.edit"
    text = 'import "a.edit"           # which model\nimport "b.edit"           # shared relations\n'
    path.write_text(text)
    assert run("fmt", "--check", str(path)).exit_code == 0


def test_fmt_refuses_a_syntax_error_and_leaves_the_file(tmp_path):
    path = tmp_path / "a.edit"
    path.write_text('edit r("A" -> "B"\n')
    result = run("fmt", str(path))
    assert result.exit_code == 2 and path.read_text() == 'edit r("A" -> "B"\n'


def test_ir_prints_canonical_json_and_hash():
    result = run("ir", LEADERSHIP)
    data = json.loads(result.stdout)
    assert data["schema_version"] == 1 and len(data["edits"]) == 3
    digest = run("ir", "--hash", LEADERSHIP).stdout.strip()
    assert len(digest) == 64


def test_ir_schema():
    schema = json.loads(run("ir", "--schema").stdout)
    assert schema["title"] == "Spec"


def test_ir_without_spec_is_a_usage_error():
    assert run("ir").exit_code == 2


def test_front_end_does_not_import_torch():
    code = ("import sys; from editspec.cli import main\n"
            "try:\n    main(['check', '-q', %r])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch imported'" % LEADERSHIP)
    subprocess.run([sys.executable, "-c", code], check=True)


def test_commands_return_outcomes_and_only_cli_turns_them_into_exit_codes():
    import re

    commands = ROOT / "editspec" / "commands"
    exits = [f"{path.name}:{n}" for path in commands.glob("*.py")
             for n, line in enumerate(path.read_text().splitlines(), start=1) if re.search(r"\bsys\.exit\(", line)]
    assert exits == []
    from editspec.cli import exit_code_of
    from editspec.errors import Outcome

    class Report:
        exit_code = 1

    assert [exit_code_of(r) for r in (None, Outcome.OK, Outcome.FAILED, Outcome.ERROR, Report())] == [0, 0, 1, 2, 1]
    with pytest.raises(TypeError):
        exit_code_of("something")
