"""Fact-editing benchmarks as specs: CounterFact (both layouts), zsRE and MQuAKE.

Every importer maps a record the same way: the requested rewrite becomes an `edit` of a
relation whose prompt is the record's template (the subject replaced by `{subject}`), the
paraphrases become `scope`, the neighbourhood prompts `keep`, and portability or multi-hop
questions `implies`.  Each relation also gets the `question` a chat user would ask: zsRE's and
MQuAKE's own questions, and for CounterFact one per relation id (`COUNTERFACT_QUESTIONS`).
Relations are keyed by (relation id, template), so an edit is checked with
exactly the prompt the benchmark wrote.

Example:
    >>> from pathlib import Path
    >>> imported = counterfact(Path("../shared/data/counterfact/counterfact_500.json"), limit=2)  # doctest: +SKIP
    >>> imported.records, len(imported.builder.edits)                                               # doctest: +SKIP
    (2, 2)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from editspec.errors import EditspecError
from editspec.importers.writer import EditRecord, FactRecord, SpecBuilder


# How a chat user asks each CounterFact relation (Wikidata property id), for the relation's
# `question`: CounterFact writes only cloze prompts, and a chat model is asked questions.
COUNTERFACT_QUESTIONS = {
    "P17": "Which country is {subject} located in?",
    "P19": "Where is {subject} originally from?",
    "P20": "In which city did {subject} die?",
    "P27": "What is the country of citizenship of {subject}?",
    "P30": "Which continent is {subject} located in?",
    "P36": "What is the capital of {subject}?",
    "P37": "What is the official language of {subject}?",
    "P39": "What position does {subject} hold?",
    "P101": "What field does {subject} work in?",
    "P103": "What is the native language of {subject}?",
    "P106": "What is the profession of {subject}?",
    "P108": "Who is the employer of {subject}?",
    "P127": "Who owns {subject}?",
    "P131": "Where is {subject} located?",
    "P136": "What genre of music does {subject} play?",
    "P138": "What is {subject} named after?",
    "P140": "Which religion is {subject} affiliated with?",
    "P159": "In which city is the headquarters of {subject}?",
    "P176": "Which company produces {subject}?",
    "P178": "Who developed {subject}?",
    "P190": "What is the twin city of {subject}?",
    "P264": "What record label is {subject} signed to?",
    "P276": "Where is {subject} located?",
    "P364": "What is the original language of {subject}?",
    "P407": "What language is {subject} written in?",
    "P413": "What position does {subject} play?",
    "P449": "On which network did {subject} originally air?",
    "P463": "Which organization is {subject} a member of?",
    "P495": "Which country does {subject} come from?",
    "P641": "Which sport does {subject} play?",
    "P740": "Where was {subject} founded?",
    "P937": "In which city did {subject} work?",
    "P1303": "Which instrument does {subject} play?",
    "P1412": "Which language does {subject} speak?",
}


@dataclass
class Imported:
    """What an importer read: the builder holding the spec, how many records, what they were."""

    builder: SpecBuilder
    records: int
    description: list[str]


def read_json_list(path: Path, limit: int | None) -> list[dict]:
    """A JSON file holding a list of objects, cut to its first `limit` records."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise EditspecError(f"cannot read {path}: {error}") from None
    except json.JSONDecodeError as error:
        raise EditspecError(f"{path} is not JSON: {error}", hint="this importer reads a JSON list of records") from None
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise EditspecError(f"{path} does not hold a JSON list of records")
    return data[:limit] if limit is not None else data


def _field(record: dict, name: str, path: Path, index: int):
    if name not in record:
        raise EditspecError(f"{path}: record {index} has no `{name}` field",
                            hint=f"fields found: {', '.join(sorted(record))}")
    return record[name]


def _template(prompt: str, subject: str) -> str | None:
    """The prompt with the subject replaced by `{subject}`, or None when it is not there."""
    return prompt.replace(subject, "{subject}") if subject and subject in prompt else None


def _relation_of(builder: SpecBuilder, record: dict, prompt_field: str, prefix: str, path: Path, index: int,
                 *, asks: bool = False):
    """(subject, relation name) of a record whose prompt names its subject; None (counted) otherwise.

    `asks`: the prompt is a question (zsRE), so it is the relation's `question` template too.
    """
    subject, prompt = _field(record, "subject", path, index), _field(record, prompt_field, path, index)
    template = _template(prompt, subject)
    if template is None:
        builder.left_out[f"records whose `{prompt_field}` does not contain the subject"] += 1
        return None
    return subject, builder.relation(template, template, prefix=prefix, question=template if asks else None)


def _optional_fact(record: dict, prompt_field: str, answer_field: str) -> list[FactRecord]:
    prompt, answer = record.get(prompt_field), record.get(answer_field)
    return [FactRecord(prompt, answer)] if prompt and answer else []


def counterfact(path: Path, limit: int | None) -> Imported:
    """CounterFact, in the ROME layout (`requested_rewrite`) or the flattened toolkit layout."""
    records = read_json_list(path, limit)
    if not records:
        return Imported(SpecBuilder(), 0, ["CounterFact (no records)"])
    fields = set(records[0])
    if "requested_rewrite" in fields:
        return _counterfact_full(path, records)
    if _FLAT_FIELDS <= fields and isinstance(records[0]["target_new"], str):
        return _counterfact_flat(path, records)
    raise EditspecError(f"{path} is in neither CounterFact layout (its first record has {', '.join(sorted(fields))})",
                        hint="the ROME layout has `requested_rewrite`; the flattened one `prompt`, `subject`, `target_new` "
                             "(and `ground_truth`, `rephrase_prompt`, `locality_prompt`, `locality_ground_truth`)")


# The flattened layout editing toolkits use; `ground_truth`, `rephrase_prompt`, `locality_prompt`
# and `locality_ground_truth` are read when present.
_FLAT_FIELDS = {"prompt", "subject", "target_new"}


def _counterfact_full(path: Path, records: list[dict]) -> Imported:
    builder = SpecBuilder()
    for i, record in enumerate(records):
        rewrite = _field(record, "requested_rewrite", path, i)
        template = rewrite["prompt"].replace("{}", "{subject}")
        relation_id = str(rewrite.get("relation_id", "rel"))
        question = COUNTERFACT_QUESTIONS.get(relation_id)
        relation = builder.relation((relation_id, template), template, prefix=relation_id.lower(), question=question)
        true = rewrite["target_true"]["str"]
        builder.add_edit(EditRecord(
            relation=relation, subject=rewrite["subject"], target=rewrite["target_new"]["str"], old=true,
            scope=list(record.get("paraphrase_prompts", [])),
            keep=[FactRecord(p, true) for p in record.get("neighborhood_prompts", [])]))
    return Imported(builder, len(records), [
        "CounterFact (ROME layout): requested_rewrite -> edit (relation per relation_id and template, with a",
        "question per relation id, for chat),",
        "paraphrase_prompts -> scope, neighborhood_prompts -> keep (they keep the true object).",
    ])


def _counterfact_flat(path: Path, records: list[dict]) -> Imported:
    builder = SpecBuilder()
    for i, record in enumerate(records):
        named = _relation_of(builder, record, "prompt", "cf", path, i)
        if named is None:
            continue
        subject, relation = named
        builder.add_edit(EditRecord(
            relation=relation, subject=subject, target=_field(record, "target_new", path, i),
            old=record.get("ground_truth"), scope=[record["rephrase_prompt"]] if record.get("rephrase_prompt") else [],
            keep=_optional_fact(record, "locality_prompt", "locality_ground_truth")))
    return Imported(builder, len(records), [
        "CounterFact (flattened layout): prompt -> edit (relation per template), rephrase_prompt -> scope,",
        "locality_prompt -> keep.",
    ])


CONTRADICTS = "records that rewrite an earlier record's fact (same subject and old answer, another question) to another object"


def zsre(path: Path, limit: int | None) -> Imported:
    """zsRE in MEND's field names; `portability` (when present) becomes `implies`."""
    records = read_json_list(path, limit)
    builder = SpecBuilder()
    rewritten: dict[tuple[str, str], str] = {}   # (subject, old answer) -> the first record's new object
    for i, record in enumerate(records):
        answers = record.get("answers") or []
        # zsRE asks one fact in several wordings, each its own relation here, and some records
        # rewrite it to different objects ("What architect designed X?" -> A, "Who is the
        # architect of X?" -> B, both was C): no model can say both, so only the first is kept.
        fact = (record.get("subject"), answers[0]) if answers else None
        if (fact is not None and _template(record.get("src") or "", fact[0] or "") is not None
                and rewritten.setdefault(fact, record.get("alt")) != record.get("alt")):
            builder.left_out[CONTRADICTS] += 1
            continue
        named = _relation_of(builder, record, "src", "q", path, i, asks=True)
        if named is None:
            continue
        subject, relation = named
        implies = []
        portability = record.get("portability")
        if isinstance(portability, dict) and portability.get("New Question") and portability.get("New Answer"):
            implies.append(FactRecord(portability["New Question"], portability["New Answer"]))
        builder.add_edit(EditRecord(
            relation=relation, subject=subject, target=_field(record, "alt", path, i),
            old=answers[0] if answers else None,
            scope=[record["rephrase"]] if record.get("rephrase") else [], keep=_optional_fact(record, "loc", "loc_ans"),
            implies=implies))
    return Imported(builder, len(records), [
        "zsRE (MEND fields): src -> edit (relation per question template, which is also its `question`),",
        "alt -> new object, answers[0] -> was,",
        "rephrase -> scope, loc -> keep, portability New Question -> implies;",
        "a record giving an earlier record's subject and old answer another new object is left out.",
    ])


def mquake(path: Path, limit: int | None) -> Imported:
    """MQuAKE: each requested rewrite an edit; the case's multi-hop questions imply its new answer.

    The questions hang on the case's last rewrite (the chain's final link).  A rewrite shared
    by several cases is one edit carrying every case's questions.
    """
    records = read_json_list(path, limit)
    builder = SpecBuilder()
    for i, case in enumerate(records):
        rewrites = _field(case, "requested_rewrite", path, i)
        hops = {hop.get("cloze"): hop for hop in case.get("new_single_hops", [])}
        edits = []
        for rewrite in rewrites:
            template = rewrite["prompt"].replace("{}", "{subject}")
            subject = rewrite["subject"]
            relation_id = str(rewrite.get("relation_id", "rel"))
            question = _template(rewrite.get("question", ""), subject)
            relation = builder.relation((relation_id, template), template, prefix=relation_id.lower(), question=question)
            target = rewrite["target_new"]["str"]
            hop = hops.get(template.replace("{subject}", subject), {})
            aliases = tuple(hop.get("answer_alias", ())) if hop.get("answer") == target else ()
            edits.append(EditRecord(relation=relation, subject=subject, target=target, aliases=aliases,
                                    old=rewrite.get("target_true", {}).get("str")))
        if edits:
            answer = _field(case, "new_answer", path, i)
            aliases = tuple(case.get("new_answer_alias", ()))
            edits[-1].implies = [FactRecord(q, answer, aliases) for q in case.get("questions", [])]
        outcomes = [builder.add_edit(edit) for edit in edits]
        if "conflict" in outcomes:
            builder.left_out["cases with a rewrite that conflicts with an earlier case"] += 1
    return Imported(builder, len(records), [
        "MQuAKE: requested_rewrite[] -> edits (relation per relation_id and template, with its question),",
        "multi-hop questions -> implies new_answer (with its aliases) on the case's last rewrite.",
    ])
