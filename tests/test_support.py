"""What a backend leaves out of a spec: one policy, a warning at the line, from check and compile."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from editspec.build.backend import Capabilities
from editspec.build.registry import backends
from editspec.build.support import backends_compiling, left_out, unsupported_parts
from editspec.cli import main
from editspec.lang.resolve import load_spec

ROOT = Path(__file__).resolve().parent.parent
ERASURE = ROOT / "specs/examples/erasure.edit"
EDITS_ONLY = Capabilities(white_box=True, batch=True, sequential=True, reversible=True)

SPEC = '''relation r { prompt "The r of {subject} is" }
edit r("A") -> "B"
canonical "teach" {
  example "The x of C is" -> "D"
}
forget "secret" {
  prompt "The code is"
  never "1234"
}
'''


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "mixed.edit"
    path.write_text(SPEC)
    return load_spec(path)


@pytest.mark.parametrize("capabilities, kinds", [
    (EDITS_ONLY, ["canonical", "forget"]),
    (EDITS_ONLY.model_copy(update={"canonical": True}), ["forget"]),
    (EDITS_ONLY.model_copy(update={"canonical": True, "forget": True}), []),
    (EDITS_ONLY.model_copy(update={"edits": False, "canonical": True, "forget": True}), ["edits"]),
])
def test_each_part_a_backend_does_not_compile_is_a_warning_at_its_line(spec, capabilities, kinds):
    warnings = unsupported_parts(spec, "b", capabilities)
    assert [part["kind"] for part in left_out(spec, capabilities)] == kinds
    assert len(warnings) == len(kinds) and all(w.severity == "warning" for w in warnings)
    lines = {"edits": 2, "canonical": 3, "forget": 6}
    assert [w.location.line for w in warnings] == [lines[kind] for kind in kinds]
    assert all(w.location.column == 1 and w.source_line for w in warnings)


def test_the_hint_names_the_backends_that_compile_the_part(spec):
    canonical, forget = unsupported_parts(spec, "rome", EDITS_ONLY)
    assert "ft" in backends_compiling("canonical") and "rome" not in backends_compiling("canonical")
    assert all(name in canonical.hint for name in backends_compiling("canonical"))
    assert all(name in forget.hint for name in backends_compiling("forget"))


def test_every_backend_declares_what_it_compiles_without_torch():
    code = ("import sys\nfrom editspec.build.registry import backends\n"
            "caps = {n: e.capabilities() for n, e in backends().items()}\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n"
            "print(sorted(n for n, c in caps.items() if c.canonical))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "ft" in out and "sense" in out and "rome" not in out
    for name, entry in backends().items():
        assert entry.capabilities() == entry.backend_class().capabilities, name


def test_check_with_a_backend_warns_and_still_exits_0():
    result = CliRunner().invoke(main, ["check", str(ERASURE), "--backend", "rome"])
    assert result.exit_code == 0
    assert f"{ERASURE}:12:1: warning: `rome` does not compile forget blocks" in result.stderr
    assert "canonical \"private-numbers-stay-private\" is left out" in result.stderr
    assert CliRunner().invoke(main, ["check", str(ERASURE), "--backend", "ft"]).stderr == ""


def test_check_with_an_unknown_backend_suggests_one():
    result = CliRunner().invoke(main, ["check", str(ERASURE), "--backend", "rom"])
    assert result.exit_code == 2 and "unknown backend `rom`" in result.stderr and "rome" in result.stderr
