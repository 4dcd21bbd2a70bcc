"""`editspec import table`: users' own facts in .csv, .tsv and .jsonl become specs that check
clean and are formatted; every bad row or column is reported with its row and column."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from editspec.cli import main
from editspec.errors import EditspecError
from editspec.lang.fmt import format_text
from editspec.importers import import_file
from editspec.lang.resolve import load_spec

HEADER = ["landmark", "city", "was", "also", "paraphrase", "neighbour", "its_city"]
ROWS = [
    ["Eiffel Tower", "Rome", "Paris", "Roma|Rome, Italy", "The Eiffel Tower stands in", "The Louvre is in the city of", "Paris"],
    ["Colosseum", "Paris", "Rome", "", "", "", ""],
    ["Big Ben", "Oslo", "", "", "", "The Brandenburg Gate is in the city of", "Berlin"],
]
COLUMNS = dict(subject="landmark", new="city", old="was", aliases="also", scope="paraphrase",
               keep_prompt="neighbour", keep_answer="its_city")
CITY = "city=The {subject} is in the city of"


def _csv_cell(value: str, delimiter: str) -> str:
    return f'"{value}"' if delimiter in value or '"' in value else value


def write_table(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    """The same table as CSV, TSV or JSON lines (an empty cell: the field left out)."""
    if path.suffix == ".jsonl":
        lines = [json.dumps({k: v for k, v in zip(header, row) if v != ""}) for row in rows]
    else:
        delimiter = "," if path.suffix == ".csv" else "\t"
        lines = [delimiter.join(_csv_cell(str(c), delimiter) for c in line) for line in [header, *rows]]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_each_format_maps_every_column(tmp_path, suffix):
    source = write_table(tmp_path / f"landmarks{suffix}", HEADER, ROWS)
    result = import_file("table", source, relation=CITY, **COLUMNS)
    assert format_text(result.text, "x.edit") == result.text
    spec = load_spec("x.edit", text=result.text)
    (relation,) = spec.relations
    assert (relation.name, relation.prompts) == ("city", ("The {subject} is in the city of",))
    eiffel, colosseum, big_ben = spec.edits
    assert (eiffel.subject, eiffel.target, eiffel.aliases, eiffel.old) == ("Eiffel Tower", "Rome", ("Roma", "Rome, Italy"), "Paris")
    assert eiffel.prompts == ("The Eiffel Tower is in the city of",)
    assert eiffel.scope == ("The Eiffel Tower stands in",)
    assert [(f.prompts, f.answer) for f in eiffel.keep] == [(("The Louvre is in the city of",), "Paris")]
    assert (colosseum.old, colosseum.aliases, colosseum.scope, colosseum.keep) == ("Rome", (), (), ())
    assert big_ben.old is None and [f.answer for f in big_ben.keep] == ["Berlin"]
    assert (result.records, result.edits, result.left_out) == (3, 3, {})


def test_the_three_formats_mean_the_same_spec(tmp_path):
    contents = {load_spec("x.edit", text=import_file("table", write_table(tmp_path / f"t{s}", HEADER, ROWS),
                                                     relation=CITY, **COLUMNS).text).content_hash()
                for s in (".csv", ".tsv", ".jsonl")}
    assert len(contents) == 1


def test_prompt_column_takes_templates_or_prompts_naming_the_subject(tmp_path):
    source = write_table(tmp_path / "p.csv", ["s", "new", "prompt", "q"], [
        ["Eiffel Tower", "Rome", "The Eiffel Tower is in the city of", "Which city is the Eiffel Tower in?"],
        ["Colosseum", "Paris", "The {subject} is in the city of", ""],
        ["Louvre", "Berlin", "{subject} belongs to the city of", "Which city owns {subject}?"],
    ])
    spec = load_spec("x.edit", text=import_file("table", source, subject="s", new="new", prompt="prompt", question="q").text)
    assert [(r.prompts, r.questions) for r in spec.relations] == [
        (("The {subject} is in the city of",), ("Which city is the {subject} in?",)),
        (("{subject} belongs to the city of",), ("Which city owns {subject}?",)),
    ]
    assert [e.relation for e in spec.edits] == [spec.relations[0].name] * 2 + [spec.relations[1].name]


def test_question_given_as_one_template(tmp_path):
    source = write_table(tmp_path / "q.tsv", ["s", "new"], [["Eiffel Tower", "Rome"]])
    spec = load_spec("x.edit", text=import_file("table", source, subject="s", new="new", relation=CITY,
                                                question="Which city is {subject} in?").text)
    assert spec.relations[0].questions == ("Which city is {subject} in?",)


def test_json_lines_take_lists(tmp_path):
    source = tmp_path / "l.jsonl"
    source.write_text(json.dumps({"s": "Eiffel Tower", "n": "Rome", "a": ["Roma", "Rom|Rome Italy"],
                                  "sc": ["It stands in", "Its city is"], "kp": ["The Louvre is in", "Notre-Dame is in"],
                                  "ka": ["Paris", "Paris"], "year": 1889}) + "\n")
    (edit,) = load_spec("x.edit", text=import_file("table", source, subject="s", new="n", relation=CITY, aliases="a",
                                                   scope="sc", keep_prompt="kp", keep_answer="ka").text).edits
    assert edit.aliases == ("Roma", "Rom", "Rome Italy") and edit.scope == ("It stands in", "Its city is")
    assert [f.prompts[0] for f in edit.keep] == ["The Louvre is in", "Notre-Dame is in"]


def test_conflicting_rows_are_left_out_and_counted(tmp_path):
    source = write_table(tmp_path / "c.csv", ["s", "new"], [["Eiffel Tower", "Rome"], ["Eiffel Tower", "Rome"],
                                                            ["Eiffel Tower", "Lima"], ["Colosseum", "Paris"]])
    result = import_file("table", source, subject="s", new="new", relation=CITY)
    assert (result.records, result.edits) == (4, 2)
    assert result.left_out == {"edits that conflict with an earlier edit of the same subject and prompt": 1}
    assert "# left out: row 4 (another new object" in result.text


# (file name, content, options, [(line, column, message)]): each bad table and what is reported.
BAD = [
    ("missing-column.csv", "landmark,town\nEiffel Tower,Rome\n", {},
     [(1, 1, "no column `city` (named by --new)")]),
    ("missing-column.tsv", "name\tcity\nEiffel Tower\tRome\n", {},
     [(1, 1, "no column `landmark` (named by --subject)")]),
    ("missing-field.jsonl", '{"landmark": "Eiffel Tower", "city": "Rome"}\n{"landmark": "Colosseum"}\n', {},
     [(2, 1, "row 2 has no field `city` (named by --new)")]),
    ("short-row.csv", "landmark,city\nEiffel Tower,Rome\nColosseum\n", {},
     [(3, 1, "row 3 has no cell for column `city` (named by --new): it has 1 cells, the header 2")]),
    ("long-row.csv", "landmark,city\nEiffel Tower,Rome,Italy\n", {},
     [(2, 1, "row 2 has 3 cells, the header names 2 columns")]),
    ("empty-subject.csv", "landmark,city\nEiffel Tower,Rome\n  ,Paris\n", {},
     [(3, 1, "row 3, column `landmark`: empty value")]),
    ("empty-new.tsv", "landmark\tcity\nEiffel Tower\t\n", {},
     [(2, 14, "row 2, column `city`: empty value")]),
    ("empty-new.jsonl", '{"landmark": "Eiffel Tower", "city": ""}\n', {},
     [(1, 30, "row 1, column `city`: empty value")]),
    ("null-new.jsonl", '{"landmark": "Eiffel Tower", "city": null}\n', {},
     [(1, 30, "row 1, column `city`: empty value")]),
    ("not-text.jsonl", '{"landmark": {"name": "Eiffel Tower"}, "city": "Rome"}\n', {},
     [(1, 2, 'row 1, column `landmark`: expected text, found {"name": "Eiffel Tower"}')]),
    ("not-json.jsonl", '{"landmark": "Eiffel Tower", "city": "Rome"}\n{"landmark": "Colosseum",\n', {},
     [(2, 26, "row 2 is not JSON: Expecting property name enclosed in double quotes")]),
    ("not-object.jsonl", '["Eiffel Tower", "Rome"]\n', {}, [(1, 1, "row 1 is not a JSON object")]),
    ("prompt-without-subject.csv", "landmark,city,prompt\nEiffel Tower,Rome,The tower is in\n",
     {"relation": None, "prompt": "prompt"},
     [(2, 19, 'row 2, column `prompt`: the prompt has no `{subject}` and does not name the subject "Eiffel Tower"')]),
    ("empty-prompt.jsonl", '{"landmark": "Eiffel Tower", "city": "Rome", "prompt": " "}\n', {"relation": None, "prompt": "prompt"},
     [(1, 46, "row 1, column `prompt`: empty value")]),
    ("question-without-subject.tsv", "landmark\tcity\tq\nEiffel Tower\tRome\tWhich city?\n", {"question": "q"},
     [(2, 19, 'row 2, column `q`: the question has no `{subject}` and does not name the subject "Eiffel Tower"')]),
    ("keep-without-answer.csv", "landmark,city,kp,ka\nEiffel Tower,Rome,The Louvre is in,\n",
     {"keep_prompt": "kp", "keep_answer": "ka"}, [(2, 36, "row 2, column `ka`: empty, but the row has a keep prompt")]),
    ("several.csv", "landmark,city\n,Rome\nColosseum,\n", {},
     [(2, 1, "row 2, column `landmark`: empty value"), (3, 11, "row 3, column `city`: empty value")]),
    ("repeated-column.csv", "landmark,city,city\nEiffel Tower,Rome,Paris\n", {},
     [(1, 15, "the header names column `city` twice")]),
]


@pytest.mark.parametrize("name, content, options, expected", BAD, ids=[b[0] for b in BAD])
def test_bad_tables_name_the_row_and_column(tmp_path, name, content, options, expected):
    source = tmp_path / name
    source.write_text(content, encoding="utf-8")
    with pytest.raises(EditspecError) as raised:
        import_file("table", source, **{"subject": "landmark", "new": "city", "relation": CITY, **options})
    found = [(d.location.line, d.location.column, d.message) for d in raised.value.diagnostics]
    assert found == expected
    assert all(d.location.file == str(source) and d.source_line is not None for d in raised.value.diagnostics)


# (options, message): mistakes in the options themselves.
BAD_OPTIONS = [
    (dict(subject="landmark", new="city", relation="The tower is in the city of"), "the --relation template has no `{subject}`"),
    (dict(subject="landmark", new="city"), "give either --prompt COLUMN"),
    (dict(subject="landmark", new="city", relation=CITY, prompt="prompt"), "give either --prompt COLUMN"),
    (dict(new="city", relation=CITY), "a table import needs --subject and --new"),
    (dict(subject="landmark", new="city", relation=CITY, keep_prompt="neighbour"), "--keep-prompt and --keep-answer go together"),
]


@pytest.mark.parametrize("options, message", BAD_OPTIONS)
def test_bad_options_are_refused(tmp_path, options, message):
    source = write_table(tmp_path / "t.csv", HEADER, ROWS)
    with pytest.raises(EditspecError, match=message.replace("{", r"\{").replace("(", r"\(")):
        import_file("table", source, **options)


def test_unknown_extension_is_refused(tmp_path):
    source = tmp_path / "facts.xlsx"
    source.write_bytes(b"PK")
    with pytest.raises(EditspecError, match="cannot tell the table format"):
        import_file("table", source, subject="s", new="n", relation=CITY)


def test_semicolon_csv_and_byte_order_mark(tmp_path):
    source = tmp_path / "excel.csv"
    source.write_bytes("\ufefflandmark;city\nEiffel Tower;Rome\n".encode("utf-8"))
    (edit,) = load_spec("x.edit", text=import_file("table", source, subject="landmark", new="city", relation=CITY).text).edits
    assert (edit.subject, edit.target) == ("Eiffel Tower", "Rome")


def test_cli_writes_a_spec_that_checks_clean_and_is_formatted(tmp_path):
    source = write_table(tmp_path / "landmarks.csv", HEADER, ROWS)
    out = tmp_path / "landmarks.edit"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in COLUMNS.items()]
    result = CliRunner().invoke(main, ["import", "table", str(source), "-o", str(out), "--relation", CITY, *flags])
    assert result.exit_code == 0, result.output
    assert "3 records -> 3 edits" in result.stderr
    assert CliRunner().invoke(main, ["check", str(out)]).exit_code == 0
    assert CliRunner().invoke(main, ["fmt", "--check", str(out)]).exit_code == 0


def test_cli_reports_row_and_column_and_writes_nothing(tmp_path):
    source = tmp_path / "bad.csv"
    source.write_text("landmark,city\nEiffel Tower,\n", encoding="utf-8")
    out = tmp_path / "bad.edit"
    result = CliRunner().invoke(main, ["import", "table", str(source), "-o", str(out), "--subject", "landmark",
                                       "--new", "city", "--relation", CITY])
    assert result.exit_code == 2
    assert f"{source}:2:14: error: row 2, column `city`: empty value" in result.stderr
    assert not out.exists()


def test_table_options_belong_to_table_imports(tmp_path):
    result = CliRunner().invoke(main, ["import", "zsre", str(tmp_path / "x.json"), "-o", "-", "--subject", "s"])
    assert result.exit_code == 2 and "--subject apply to `table` imports only" in result.output


def test_help_teaches_with_an_example():
    result = CliRunner().invoke(main, ["import", "--help"])
    assert result.exit_code == 0
    assert "editspec import table landmarks.csv" in result.output
    assert 'edit city("Eiffel Tower") -> "Rome"' in result.output
    for flag in ("--subject", "--new", "--old", "--prompt", "--relation", "--question", "--aliases",
                 "--keep-prompt", "--keep-answer", "--scope"):
        assert flag in result.output


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_cell_may_hold_a_line_separator(tmp_path, suffix):
    source = write_table(tmp_path / f"u{suffix}", ["s", "new"], [["Tour\u2028Eiffel", "Rome"], ["Colosseum", "Paris"]])
    edits = load_spec("x.edit", text=import_file("table", source, subject="s", new="new", relation=CITY).text).edits
    assert [e.subject for e in edits] == ["Tour\u2028Eiffel", "Colosseum"]
