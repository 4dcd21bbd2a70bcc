"""The language front end: parsing, lowering, resolution, IR and semantic checks, as tables."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from editspec import ir
from editspec.errors import EditspecError
from editspec.lang.resolve import analyse, load_spec

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "specs" / "examples").rglob("*.edit"))
PREAMBLE = 'relation ceo {\n  prompt "The CEO of {subject} is"\n  paraphrase "{subject} is led by"\n}\n'


def spec_of(body: str) -> ir.Spec:
    return load_spec("t.edit", text=PREAMBLE + body)


def errors_of(body: str) -> list[tuple[int, int, str]]:
    analysis = analyse("t.edit", text=PREAMBLE + body)
    return [(d.location.line - 4, d.location.column, d.message) for d in analysis.errors]


# -- values -----------------------------------------------------------------------------------
@pytest.mark.parametrize("written, value", [
    (r'"plain"', "plain"),
    (r'"say \"hi\""', 'say "hi"'),
    (r'"a\\b"', "a\\b"),
    (r'"line\nbreak\ttab"', "line\nbreak\ttab"),
    (r'"\u00e9t\u{1F600}"', "ét\U0001F600"),
    ('"漢字 and émoji 😀"', "漢字 and émoji 😀"),
])
def test_string_escapes(written, value):
    assert spec_of(f'edit ceo({written}) -> "X"').edits[0].subject == value


@pytest.mark.parametrize("written, value", [("0.95", 0.95), ("95%", 0.95), ("1/5", 0.2), ("1", 1.0), ("0", 0.0)])
def test_threshold_numbers(written, value):
    assert spec_of(f"expect {{ efficacy >= {written} }}").expect[0].value == pytest.approx(value)


@pytest.mark.parametrize("written, value", [
    ("4..8", ir.Range(start=4, end=8)), ("3", 3), ("-1", -1), ("0.5", 0.5), ("1e-3", 0.001), ('"r-rome"', "r-rome"),
    ("true", True), ("false", False), ("auto", "auto"), ('[1, 2, "x"]', (1, 2, "x")),
    ("[[5, 10], [10, 10]]", ((5, 10), (10, 10))), ("[]", ()),
])
def test_backend_setting_values(written, value):
    # An uninstalled third-party backend: its settings are read but not checked.
    assert spec_of(f"backend thirdparty {{ key {written} }}").backends[0].as_dict() == {"key": value}


def test_range_values():
    assert ir.Range(start=4, end=8).values() == [4, 5, 6, 7, 8]


# -- expansion and ids --------------------------------------------------------------------------
def test_relation_templates_expand_for_edits_and_keeps():
    spec = spec_of('edit ceo("Twitter") -> "Linda" | "L" { was "Jack" scope { "x" } keep { ceo("Apple") -> "Tim" } }')
    edit = spec.edits[0]
    assert edit.prompts == ("The CEO of Twitter is",)
    assert edit.paraphrases == ("Twitter is led by",)
    assert (edit.target, edit.aliases, edit.old, edit.scope) == ("Linda", ("L",), "Jack", ("x",))
    assert edit.keep[0].prompts == ("The CEO of Apple is",)
    assert (edit.keep[0].relation, edit.keep[0].subject, edit.keep[0].answer) == ("ceo", "Apple", "Tim")


def test_edits_batch_expands_like_single_edits():
    batch = spec_of('edits ceo {\n "A" -> "X" was "Y"\n "B" -> "Z" | "Zed"\n}').edits
    assert [(e.subject, e.target, e.old, e.aliases) for e in batch] == [("A", "X", "Y", ()), ("B", "Z", None, ("Zed",))]


def test_ids_depend_on_content_not_position():
    one = spec_of('edit ceo("A") -> "X"\nedit ceo("B") -> "Y"')
    moved = spec_of('\n\n# comment\nedit ceo("B") -> "Y"\n\nedit ceo("A") -> "X"')
    assert {e.subject: e.id for e in one.edits} == {e.subject: e.id for e in moved.edits}
    changed = spec_of('edit ceo("A") -> "Other"')
    assert changed.edits[0].id != one.edits[0].id
    assert one.edits[0].id.startswith("ceo-a-")


def test_content_hash_ignores_positions_and_comments():
    a = spec_of('edit ceo("A") -> "X"')
    b = load_spec("other.edit", text="# c\n" + PREAMBLE.replace("\n", "\n\n") + 'edit ceo("A")\n -> "X"')
    assert a.content_hash() == b.content_hash()
    assert a.content_hash() != spec_of('edit ceo("A") -> "Y"').content_hash()


def test_every_node_has_a_span():
    spec = load_spec(ROOT / "specs/examples/leadership.edit")

    def walk(data, path="spec"):
        if isinstance(data, dict):
            if path != "spec" and "kind" not in data and set(data) - {"file", "line", "column", "end_line", "end_column"}:
                assert "span" in data, path
            for key, value in data.items():
                walk(value, f"{path}.{key}")
        elif isinstance(data, list):
            for i, value in enumerate(data):
                walk(value, f"{path}[{i}]")

    walk(spec.model_dump(mode="json"))


def test_ir_is_frozen_and_strict():
    spec = spec_of('edit ceo("A") -> "X"')
    with pytest.raises(Exception):
        spec.edits[0].target = "Y"
    data = json.loads(spec.to_json())
    data["edits"][0]["surprise"] = 1
    with pytest.raises(Exception):
        ir.Spec.model_validate(data)


def test_ir_refuses_other_schema_versions():
    data = json.loads(spec_of('edit ceo("A") -> "X"').to_json())
    data["schema_version"] = 999
    with pytest.raises(EditspecError, match="schema version"):
        ir.Spec.from_json(json.dumps(data))


def test_json_schema_describes_the_spec():
    schema = ir.json_schema()
    assert schema["title"] == "Spec"
    assert {"Edit", "Relation", "Fact", "Span"} <= set(schema["$defs"])


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_round_trip_through_json(path):
    spec = load_spec(path)
    assert ir.Spec.from_json(spec.to_json()) == spec


# -- imports ----------------------------------------------------------------------------------
def test_imports_merge_relations_and_edits(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "common.edit").write_text(PREAMBLE + 'edit ceo("Lib") -> "L"\nexpect { efficacy >= 0.5 }\n')
    (tmp_path / "main.edit").write_text('import "lib/common.edit"\nedit ceo("Main") -> "M"\nexpect { efficacy >= 0.9 }\n')
    spec = load_spec(tmp_path / "main.edit")
    assert {e.subject for e in spec.edits} == {"Main", "Lib"}
    assert spec.expect[0].value == 0.9  # the importing file wins
    assert spec.files[0].endswith("main.edit") and spec.files[1].endswith("common.edit")


def test_conflicts_are_found_across_imports(tmp_path):
    (tmp_path / "a.edit").write_text(PREAMBLE + 'edit ceo("X") -> "One"\n')
    (tmp_path / "b.edit").write_text('import "a.edit"\nedit ceo("X") -> "Two"\n')
    analysis = analyse(tmp_path / "b.edit")
    assert [d.message.split(":")[0] for d in analysis.errors] == ["conflicting edits"]
    assert analysis.errors[0].location.file.endswith("a.edit") or analysis.errors[0].location.file.endswith("b.edit")


def test_import_cycle_and_missing_import(tmp_path):
    (tmp_path / "a.edit").write_text('import "b.edit"\n')
    (tmp_path / "b.edit").write_text('import "a.edit"\nimport "nope.edit"\n')
    messages = [d.message for d in analyse(tmp_path / "a.edit").errors]
    assert any(m.startswith("import cycle: a.edit -> b.edit -> a.edit") for m in messages)
    assert any(m.startswith("cannot find imported file `nope.edit`") for m in messages)


# -- semantic checks: (body, [(line, column, message start)]) ------------------------------------
CHECKS = [
    ('edit coe("A") -> "X"', [(1, 6, "unknown relation `coe`")]),
    ('relation r { prompt "no placeholder" }', [(1, 21, "prompt template has no `{subject}`")]),
    ('relation r { question "Who {subject}?" }', [(1, 10, "relation `r` has no prompt template")]),
    (PREAMBLE, [(1, 1, "duplicate relation `ceo`")]),
    ('edit ceo("A") -> "X"\nedit ceo("A") -> "X"', [(2, 1, "duplicate edit")]),
    ('edit ceo("A") -> "X"\nedits ceo { "A" -> "Y" }', [(2, 13, "conflicting edits")]),
    ('edit ceo("A") -> "X" { keep { ceo("A") -> "Old" } }', [(1, 31, "keep contradicts an edit")]),
    ('edit ceo("A") -> "X" { keep { "The CEO of A is" -> "Old" } }', [(1, 31, "keep contradicts an edit")]),
    ('edit ceo("A") -> "X" | "Ex" { keep { ceo("A") -> "ex" } }', []),
    ('edit ceo("") -> "X"', [(1, 1, "empty subject")]),
    ('edit ceo("A") -> " "', [(1, 1, "empty new object")]),
    ("expect { efficacy >= 1.5 }", [(1, 10, "threshold 1.5 for `efficacy` is outside its range")]),
    ("expect { efficacy >= 150% }", [(1, 10, "threshold 1.5 for `efficacy`")]),
    ("expect { fluency >= 5.5 }", []),
    ("expect { efficasy >= 0.5 }", [(1, 10, "unknown metric `efficasy`")]),
    ("expect { efficacy >= 0.5\n efficacy >= 0.6 }", [(2, 2, "duplicate expectation for `efficacy`")]),
    ('canonical "c" { example "p" -> "a" check p >= 3/2 { "q" -> "a" } }', [(1, 36, "probability threshold 3/2")]),
    ('canonical "c" { check p >= 1/5 { "q" -> "a" } }', [(1, 1, "canonical `c` needs exactly one `example`")]),
    ('canonical "c" { example "p" -> "a" over "a" }', [(1, 1, "`over` names the same continuation")]),
    ('forget "f" { prompt "p" }', [(1, 1, "forget `f` has no `never`")]),
    ('preserve { budget kl <= 0.1 }', [(1, 1, "preserve block has no `text` or `file`")]),
    ('preserve { text "t" budget loss <= 0.1 }', [(1, 28, "unknown budget metric `loss`")]),
    ('preserve { file "missing.txt" }', [(1, 17, "cannot find preserve file `missing.txt`")]),
    ("backend memti { layers 4..8 }", [(1, 1, "unknown backend `memti`")]),
    ("backend memit { layers 8..4 }", [(1, 24, "empty range 8..4")]),
    ('model "a"\nmodel "b"', [(2, 1, "`model` is set twice")]),
    ('edit ceo("A") -> "X\\q"', [(1, 20, "invalid escape `\\q`")]),
]


@pytest.mark.parametrize("body, expected", CHECKS, ids=[c[0][:40] for c in CHECKS])
def test_semantic_checks(body, expected):
    found = errors_of(body)
    assert [(line, column) for line, column, _ in found] == [(line, column) for line, column, _ in expected]
    for (_, _, message), (_, _, start) in zip(found, expected):
        assert message.startswith(start), message


def test_all_errors_are_reported_at_once():
    found = errors_of('edit coe("A") -> "X"\nexpect { efficasy >= 0.5 }\nedit ceo("") -> "Y"')
    assert [line for line, _, _ in found] == [1, 2, 3]


def test_hints_suggest_the_nearest_name():
    analysis = analyse("t.edit", text=PREAMBLE + 'edit coe("A") -> "X"')
    assert analysis.errors[0].hint == "did you mean `ceo`?"


def test_unknown_backend_outside_the_design_is_a_warning():
    analysis = analyse("t.edit", text="backend my_plugin { x 1 }")
    assert analysis.spec is not None
    assert [d.severity for d in analysis.diagnostics] == ["warning"]


@pytest.mark.parametrize("data, message", [
    (b'model "x"\n\xff\xfe', "invalid UTF-8"),
    (b'model "x"\x00\x01', "this is not a text file"),
])
def test_bad_bytes_are_diagnostics(tmp_path, data, message):
    path = tmp_path / "bad.edit"
    path.write_bytes(data)
    analysis = analyse(path)
    assert analysis.spec is None and analysis.errors[0].message.startswith(message)


def test_a_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "bom.edit"
    path.write_bytes("\ufeff".encode() + PREAMBLE.encode())
    assert load_spec(path).relations[0].name == "ceo"
