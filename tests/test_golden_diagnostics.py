"""Golden diagnostics: what `editspec check` prints for each bad spec in `specs/invalid/`.

Each `specs/invalid/NAME.edit` holds one mistake (`several-errors.edit` several) and its sibling
`NAME.expected` holds exactly the stderr of `editspec check specs/invalid/NAME.edit` run from
the repository root.  Only files directly in `specs/invalid/` are cases; `specs/invalid/include/`
holds helper files that the cases import.  The CLI runs in-process through click's CliRunner.

The example specs in `specs/examples/` must check clean (exit 0, nothing on stderr) and be in
`editspec fmt` canonical form.

When a diagnostic changes on purpose, regenerate the goldens and review the diff:

    EDITSPEC_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden_diagnostics.py
    git diff specs/invalid/
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from editspec.cli import main

REPO = Path(__file__).resolve().parent.parent
INVALID = REPO / "specs" / "invalid"
EXAMPLES = REPO / "specs" / "examples"
UPDATE = os.environ.get("EDITSPEC_UPDATE_GOLDEN") == "1"

CASES = sorted(p.stem for p in INVALID.glob("*.edit"))
EXAMPLE_SPECS = sorted(p.relative_to(REPO).as_posix() for p in EXAMPLES.rglob("*.edit"))


def _run(monkeypatch: pytest.MonkeyPatch, *args: str):
    monkeypatch.chdir(REPO)
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.mark.parametrize("name", CASES)
def test_golden_diagnostics(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    result = _run(monkeypatch, "check", f"specs/invalid/{name}.edit")
    expected_path = INVALID / f"{name}.expected"
    if UPDATE:
        expected_path.write_text(result.stderr, encoding="utf-8", newline="\n")
    assert expected_path.exists(), f"no golden for {name}: run with EDITSPEC_UPDATE_GOLDEN=1"
    assert result.exit_code == 2, result.output
    assert result.stderr == expected_path.read_text(encoding="utf-8")
    assert "Traceback" not in result.stderr


def test_there_are_enough_golden_cases() -> None:
    assert len(CASES) >= 20


def test_every_golden_has_its_spec() -> None:
    stale = sorted(p.name for p in INVALID.glob("*.expected") if not p.with_suffix(".edit").exists())
    assert not stale, f"goldens without a spec: {stale}"


@pytest.mark.parametrize("path", EXAMPLE_SPECS)
def test_example_checks_clean(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    result = _run(monkeypatch, "check", path)
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""


@pytest.mark.parametrize("path", EXAMPLE_SPECS)
def test_example_is_formatted(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    result = _run(monkeypatch, "fmt", "--check", path)
    assert result.exit_code == 0, result.output


def test_there_are_example_specs() -> None:
    top_level = [p for p in EXAMPLE_SPECS if p.count("/") == 2]
    assert len(top_level) >= 5, top_level
