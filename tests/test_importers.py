"""Importers: slices of every public format become specs that check clean, are formatted, and
keep their record counts."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from editspec.cli import main
from editspec.lang.fmt import format_text
from editspec.importers import import_file
from editspec.importers.factual import CONTRADICTS, COUNTERFACT_QUESTIONS
from editspec.importers.writer import EditRecord, FactRecord, SpecBuilder
from editspec.lang.literals import quote
from editspec.lang.resolve import load_spec

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"benchmark data not found at {DATA}")
CANONICAL = "canonical-examples/{0}/split/{0}_{1}-val.jsonl"

# (format, file, records per slice)
SLICES = [
    ("counterfact", "counterfact/counterfact_500.json", 25),
    ("counterfact", "counterfact/counterfact-train.json", 25),
    ("zsre", "zsre/zsre_mend_eval_portability_gpt4.json", 25),
    ("zsre", "zsre/zsre_mend_train-1k.json", 25),
    ("mquake", "mquake/MQuAKE-CF.json", 10),
    ("canonical", CANONICAL.format("country_capital", "fixed"), 4),
    ("canonical", CANONICAL.format("company_ceo", "train"), 4),
    ("canonical", CANONICAL.format("temporal", "train"), 3),
    ("canonical", CANONICAL.format("verb_conjugation", "train"), 4),
]


def _written(tmp_path: Path, kind: str, file: str, limit: int):
    out = tmp_path / "imported.edit"
    result = CliRunner().invoke(main, ["import", kind, str(DATA / file), "-o", str(out), "--limit", str(limit)])
    assert result.exit_code == 0, result.output
    assert f"{limit} records" in result.stderr
    return out, load_spec(out), result.stderr


@needs_data
@pytest.mark.parametrize("kind,file,limit", SLICES, ids=[f"{k}:{Path(f).name}" for k, f, _ in SLICES])
def test_slice_checks_clean_and_is_formatted(tmp_path, kind, file, limit):
    out, spec, summary = _written(tmp_path, kind, file, limit)
    text = out.read_text(encoding="utf-8")
    assert format_text(text, str(out)) == text
    if kind == "canonical":
        assert len(spec.canonical) == limit and not spec.edits
        assert all(c.checks and c.keep for c in spec.canonical)
    elif kind != "mquake":
        contradicting = re.search(rf"left out (\d+) {re.escape(CONTRADICTS)}", summary)
        assert len(spec.edits) == limit - (int(contradicting[1]) if contradicting else 0)  # one edit per record
        assert all(e.scope and e.keep and e.old for e in spec.edits)


@needs_data
def test_counterfact_rome_layout_maps_every_field():
    record = json.loads((DATA / "counterfact/counterfact_500.json").read_text())[0]
    spec = load_spec("x.edit", text=import_file("counterfact", DATA / "counterfact/counterfact_500.json", limit=1).text)
    (edit,) = spec.edits
    rewrite = record["requested_rewrite"]
    assert edit.prompts == (rewrite["prompt"].format(rewrite["subject"]),)
    assert (edit.target, edit.old) == (rewrite["target_new"]["str"], rewrite["target_true"]["str"])
    assert edit.scope == tuple(record["paraphrase_prompts"])
    assert [f.prompts[0] for f in edit.keep] == record["neighborhood_prompts"]
    assert {f.answer for f in edit.keep} == {rewrite["target_true"]["str"]}
    assert edit.relation.startswith(rewrite["relation_id"].lower() + "_")
    assert edit.questions == (COUNTERFACT_QUESTIONS[rewrite["relation_id"]].format(subject=rewrite["subject"]),)


@needs_data
def test_every_counterfact_relation_has_a_question():
    records = json.loads((DATA / "counterfact/counterfact_500.json").read_text())
    spec = load_spec("x.edit", text=import_file("counterfact", DATA / "counterfact/counterfact_500.json").text)
    assert {r["requested_rewrite"]["relation_id"] for r in records} <= set(COUNTERFACT_QUESTIONS)
    assert all(e.questions and e.subject in e.questions[0] and e.questions[0].endswith("?") for e in spec.edits)


@needs_data
def test_zsre_keeps_one_rewrite_of_a_fact_asked_twice(tmp_path):
    """Two wordings of one fact rewritten to different objects cannot both hold: the first stays."""
    records = [
        {"subject": "Toodyay Fire Station", "src": "What architect designed Toodyay Fire Station?",
         "alt": "Wyndham Lewis", "answers": ["Ken Duncan"], "rephrase": "", "loc": "", "loc_ans": ""},
        {"subject": "Toodyay Fire Station", "src": "Who is the architect of Toodyay Fire Station?",
         "alt": "Kohn Pedersen Fox", "answers": ["Ken Duncan"], "rephrase": "", "loc": "", "loc_ans": ""},
        {"subject": "Toodyay Fire Station", "src": "Who was the architect of Toodyay Fire Station?",
         "alt": "Wyndham Lewis", "answers": ["Ken Duncan"], "rephrase": "", "loc": "", "loc_ans": ""},
        {"subject": "Toodyay Fire Station", "src": "In which town is Toodyay Fire Station?",
         "alt": "Perth", "answers": ["Toodyay"], "rephrase": "", "loc": "", "loc_ans": ""},
    ]
    source = tmp_path / "zsre.json"
    source.write_text(json.dumps(records))
    result = import_file("zsre", source)
    spec = load_spec("x.edit", text=result.text)
    assert sorted(e.target for e in spec.edits) == ["Perth", "Wyndham Lewis", "Wyndham Lewis"]
    assert result.left_out == {CONTRADICTS: 1}
    assert len({r.name for r in spec.relations}) == 3   # no relation left without an edit


def test_zsre_portability_becomes_implies():
    record = json.loads((DATA / "zsre/zsre_mend_eval_portability_gpt4.json").read_text())[0]
    spec = load_spec("x.edit", text=import_file("zsre", DATA / "zsre/zsre_mend_eval_portability_gpt4.json", limit=1).text)
    (edit,) = spec.edits
    assert edit.prompts == (record["src"],) and edit.target == record["alt"]
    assert edit.questions == (record["src"],)  # zsRE's prompt is its question: chat asks it as written
    assert [(f.prompts[0], f.answer) for f in edit.implies] == [
        (record["portability"]["New Question"], record["portability"]["New Answer"])]
    assert [(f.prompts[0], f.answer) for f in edit.keep] == [(record["loc"], record["loc_ans"])]


@needs_data
def test_mquake_counts_survive():
    cases = json.loads((DATA / "mquake/MQuAKE-CF.json").read_text())[:40]
    spec = load_spec("x.edit", text=import_file("mquake", DATA / "mquake/MQuAKE-CF.json", limit=40).text)
    rewrites = {(r["relation_id"], r["prompt"], r["subject"]) for c in cases for r in c["requested_rewrite"]}
    assert len(spec.edits) == len(rewrites)
    questions = {q for c in cases for q in c["questions"]}
    assert {f.prompts[0] for e in spec.edits for f in e.implies} == questions
    assert all(e.relation and spec.relations for e in spec.edits)
    assert all(r.questions for r in spec.relations)
    asked = {r["question"] for c in cases for r in c["requested_rewrite"]}
    assert {q for e in spec.edits for q in e.questions} <= asked


@needs_data
@pytest.mark.parametrize("file,records", [("counterfact/counterfact_500.json", 500),
                                          ("zsre/zsre_mend_train-1k.json", 1000)])
def test_whole_file_round_trip_accounts_for_every_record(file, records):
    kind = file.split("/")[0]
    result = import_file(kind, DATA / file)
    assert result.records == records
    dropped = sum(n for why, n in result.left_out.items() if why.startswith(("records", "edits")))
    assert result.edits + dropped == records
    assert len(load_spec("x.edit", text=result.text).edits) == result.edits


@needs_data
def test_country_capital_contrast_comes_from_hard_negatives():
    result = import_file("canonical", DATA / CANONICAL.format("country_capital", "fixed"), limit=2)
    spec = load_spec("x.edit", text=result.text)
    assert [c.name for c in spec.canonical] == ["capital-of-afghanistan", "capital-of-albania"]
    assert all(c.over and c.over.startswith(" ") and c.over != c.answer for c in spec.canonical)
    assert all(k.answer == c.over for c in spec.canonical for k in c.keep[:1])


@needs_data
def test_balancing_tasks_are_refused_with_the_reason():
    result = CliRunner().invoke(main, ["import", "canonical", str(DATA / CANONICAL.format("stereoset", "train")),
                                       "-o", "-"])
    assert result.exit_code == 2 and "lowers a stereotyped continuation" in result.stderr


def test_conflicting_records_are_left_out_and_counted(tmp_path):
    rows = [dict(case_id=i, prompt="The twin city of Rome is", subject="Rome", target_new=new, ground_truth="Paris",
                 rephrase_prompt="Rome is twinned with", locality_prompt="The twin city of Oslo is",
                 locality_ground_truth="Paris") for i, new in enumerate(["Kyoto", "Kyoto", "Lima"])]
    source = tmp_path / "cf.json"
    source.write_text(json.dumps(rows))
    result = import_file("counterfact", source)
    assert (result.records, result.edits) == (3, 1)
    assert sum(result.left_out.values()) == 1


def test_record_whose_question_does_not_name_its_subject_is_counted(tmp_path):
    rows = [dict(subject="UniFirst", src="What does UniFirst make?", alt="drones", answers=["uniforms"]),
            dict(subject="Acme", src="What does the company make?", alt="anvils", answers=["rockets"])]
    source = tmp_path / "zsre.json"
    source.write_text(json.dumps(rows))
    result = import_file("zsre", source)
    assert (result.records, result.edits) == (2, 1)
    assert {k: n for k, n in result.left_out.items() if n} == {"records whose `src` does not contain the subject": 1}


def test_keep_fact_that_another_edit_changes_is_left_out():
    builder = SpecBuilder()
    rel = builder.relation("r", "{subject} is in", prefix="p30")
    builder.add_edit(EditRecord(rel, "Ghana", "Europe", keep=[FactRecord("Kenya is in", "Africa")]))
    builder.add_edit(EditRecord(rel, "Kenya", "Asia", keep=[FactRecord("Ghana is in", "Africa"),
                                                                FactRecord("Mali is in", "Africa")]))
    spec = load_spec("x.edit", text=builder.render(["t"]))
    assert [len(e.keep) for e in spec.edits] == [0, 1]


@pytest.mark.parametrize("text", [
    'say "hi"', "back\\slash", "two\nlines", "tab\there", "nul\0", "line\u2028sep", "zero\u200bwidth",
    "Kolinda Grabar-Kitarović", "東京", "emoji 🎉", "{subject} literal", "trailing \\", "\x7f\x1b[31m",
])
def test_quote_round_trips_through_the_language(text):
    builder = SpecBuilder()
    rel = builder.relation("r", "The answer of {subject} is", prefix="r")
    builder.add_edit(EditRecord(rel, "S " + text, text + " T", scope=[text + " scope"], implies=[FactRecord(text, "A")]))
    (edit,) = load_spec("x.edit", text=builder.render(["t"])).edits
    assert (edit.subject, edit.target, edit.scope, edit.implies[0].prompts) == (
        "S " + text, text + " T", (text + " scope",), (text,))
    assert quote(text).count("\n") == 0


FLAT_RECORD = dict(case_id=8, prompt="What is the twin city of Wellington? It is", subject="Wellington",
                   target_new="Sheffield", ground_truth="Sydney",
                   rephrase_prompt="Wellington's twin city has famous tourist attractions including",
                   locality_prompt="The twin city of Seoul is", locality_ground_truth="Sydney")


def test_counterfact_flattened_layout_maps_every_field(tmp_path):
    source = tmp_path / "counterfact-edit.json"
    source.write_text(json.dumps([FLAT_RECORD]))
    (edit,) = load_spec("x.edit", text=import_file("counterfact", source).text).edits
    assert edit.prompts == (FLAT_RECORD["prompt"],)
    assert (edit.subject, edit.target, edit.old) == ("Wellington", "Sheffield", "Sydney")
    assert edit.scope == (FLAT_RECORD["rephrase_prompt"],)
    assert [(f.prompts[0], f.answer) for f in edit.keep] == [("The twin city of Seoul is", "Sydney")]


@pytest.mark.parametrize("record", [
    {"prompt": "The twin city of Rome is", "target_new": "Kyoto"},                      # no subject
    {"src": "What is the twin city of Rome?", "subject": "Rome", "alt": "Kyoto"},       # zsRE fields
    {"prompt": "x", "subject": "Rome", "target_new": {"str": "Kyoto"}},                # ROME's target without the wrapper
])
def test_counterfact_in_neither_layout_is_refused_with_both_layouts_named(tmp_path, record):
    source = tmp_path / "cf.json"
    source.write_text(json.dumps([record]))
    result = CliRunner().invoke(main, ["import", "counterfact", str(source), "-o", "-"])
    assert result.exit_code == 2
    assert "neither CounterFact layout" in result.stderr and ", ".join(sorted(record)) in result.stderr
    assert "`requested_rewrite`" in result.stderr and "`locality_ground_truth`" in result.stderr
