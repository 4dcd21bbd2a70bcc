"""The canonical-examples tasks (Hewitt et al., 2024) as `canonical` blocks.

FILE is a task's training file (`country_capital_fixed-val.jsonl`, `company_ceo_train-val.jsonl`,
`temporal_train-val.jsonl`, `verb_conjugation_train-val.jsonl`, ...).  Each row becomes one block:
`example prefix -> suffix` (or `suffix1 over suffix2`).  The evaluation and hard-negative files
of the same task and split are found next to it (or named with `--eval` / `--hard-neg`):
evaluation rows become the `check` of the block about the same entity, hard negatives its
`keep`.  Where a task's hard negatives are about other entities (CEOs of companies that are not
edited, other people, other verbs' sentences) they are task-level: they are spread over the
blocks in turn, so every block guards some of them.

The pronoun and StereoSet tasks ask to balance or lower continuations, which a `canonical`
block (make this answer likely) does not say; importing them is refused with that reason.

Example:
    >>> from pathlib import Path
    >>> data = Path("../shared/data/canonical-examples/country_capital/split")
    >>> imported = canonical(data / "country_capital_fixed-val.jsonl", limit=3)  # doctest: +SKIP
    >>> [c.name for c in imported.builder.canonical]                            # doctest: +SKIP
    ['capital-of-afghanistan', 'capital-of-albania', 'capital-of-algeria']
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

from editspec.errors import EditspecError
from editspec.importers.factual import Imported
from editspec.importers.writer import CanonicalRecord, FactRecord, SpecBuilder, normalise, slug_words


def _first_word(text: str) -> str:
    words = text.split()
    return words[0].strip(".,;:").lower() if words else ""


def _verb_key(row: dict) -> str:
    return "/".join(sorted({_first_word(row.get("suffix1", "")), _first_word(row.get("suffix2", ""))}))


# task -> (entity key of a row, block name prefix, are hard negatives about the edited entities?)
_TASKS: dict[str, tuple[Callable[[dict], str], str, bool]] = {
    "country_capital": (lambda row: row.get("country", ""), "capital-of", True),
    "company_ceo": (lambda row: row.get("company", ""), "ceo-of", False),
    "temporal": (lambda row: row.get("entity_string", "").rsplit("/", 1)[-1], "about", False),
    "verb_conjugation": (_verb_key, "verb", False),
}
_REFUSED = {
    "pronoun_gender_bias": "the task balances two pronouns; a canonical block makes one answer likely",
    "stereoset": "the task lowers a stereotyped continuation; a canonical block makes one answer likely",
}


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSON-lines file (blank lines skipped)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise EditspecError(f"cannot read {path}: {error}") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise EditspecError(f"{path}:{number}: not a JSON object: {error}",
                                hint="canonical-examples files hold one JSON object per line") from None
    return rows


def task_of(path: Path) -> str:
    """The task a canonical-examples file belongs to, from its name."""
    for task in [*_TASKS, *_REFUSED]:
        if path.name.startswith(task):
            return task
    raise EditspecError(f"cannot tell which canonical-examples task {path.name} belongs to",
                        hint=f"known tasks: {', '.join([*_TASKS, *_REFUSED])}")


def sibling(path: Path, kind: str) -> Path | None:
    """The evaluation (`kind="eval"`) or hard-negative (`"hard_neg"`) file next to a training file."""
    split = re.search(r"-(val|test)\.jsonl$", path.name)
    suffix = f"-{split.group(1)}.jsonl" if split else ".jsonl"
    task = task_of(path)
    candidates = []
    for other in sorted(path.parent.glob(f"{task}_*{suffix}")):
        stem = other.name[len(task) + 1:-len(suffix)]
        if not split and "-" in stem or "unconditional" in stem or "multi" in stem or other == path:
            continue
        if kind == "hard_neg" and "hard_neg" in stem and "entities" not in stem:
            candidates.append(other)
        elif kind == "eval" and "eval" in stem and "hard_neg" not in stem:
            candidates.append(other)
    # Prefer the "clear" documents (those that build up to the answer without naming it).
    candidates.sort(key=lambda p: ("clear" not in p.name, len(p.name)))
    return candidates[0] if candidates else None


def _example(row: dict, path: Path, index: int) -> tuple[str, str, str | None]:
    if "suffix" in row:
        return row.get("prefix", ""), row["suffix"], None
    if "suffix1" in row and "suffix2" in row:
        return row.get("prefix", ""), row["suffix1"], row["suffix2"]
    raise EditspecError(f"{path}: row {index + 1} has no `suffix` (or `suffix1`/`suffix2`)",
                        hint=f"fields found: {', '.join(sorted(row))}")


def canonical(path: Path, limit: int | None, *, eval_file: Path | None = None, hard_neg_file: Path | None = None,
              threshold: str = "1/5") -> Imported:
    """One canonical block per training row, with matched checks and hard negatives."""
    if not re.fullmatch(r"[0-9]+(\.[0-9]+)?(%|/[0-9]+)?", threshold):
        raise EditspecError(f"threshold `{threshold}` is not a number", hint="write e.g. 1/5, 0.2 or 20%")
    task = task_of(path)
    if task in _REFUSED:
        raise EditspecError(f"cannot import the {task} task as canonical blocks: {_REFUSED[task]}")
    key_of, prefix, negatives_by_entity = _TASKS[task]
    rows = read_jsonl(path)
    rows = rows[:limit] if limit is not None else rows
    eval_file = eval_file or sibling(path, "eval")
    hard_neg_file = hard_neg_file or sibling(path, "hard_neg")
    builder = SpecBuilder()
    blocks: dict[str, CanonicalRecord] = {}
    for i, row in enumerate(rows):
        prompt, answer, over = _example(row, path, i)
        key = key_of(row)
        block = CanonicalRecord(name="-".join([prefix, *slug_words(key or str(i + 1), 8)]), prompt=prompt,
                                answer=answer, over=over, threshold=threshold)
        builder.add_canonical(block)
        blocks.setdefault(key, block)
    checks = _attach(builder, blocks, eval_file, key_of, "checks", spread=False)
    negatives = _attach(builder, blocks, hard_neg_file, key_of, "keep", spread=not negatives_by_entity)
    # `over` for country-capital: the hard negative's other city is the usual wrong answer.
    if task == "country_capital" and hard_neg_file is not None:
        for row in read_jsonl(hard_neg_file):
            block = blocks.get(key_of(row))
            city = " " + str(row.get("other_city", "")).strip()
            if block is not None and block.over is None and city.strip() and normalise(city) != normalise(block.answer):
                block.over = city
    return Imported(builder, len(rows), [
        f"canonical-examples, {task} task: each row of {path.name} -> canonical example,",
        f"{eval_file.name if eval_file else 'no evaluation file'} -> check p >= {threshold} ({checks} facts), "
        f"{hard_neg_file.name if hard_neg_file else 'no hard-negative file'} -> keep ({negatives} facts).",
    ])


def _attach(builder: SpecBuilder, blocks: dict[str, CanonicalRecord], path: Path | None,
            key_of: Callable[[dict], str], clause: str, *, spread: bool) -> int:
    """Add each row of `path` to the block about the same entity; with `spread`, others in turn."""
    if path is None or not blocks:
        return 0
    attached, turn, order = 0, 0, list(builder.canonical)
    for row in read_jsonl(path):
        prompt = row.get("prefix", "")
        answer = row.get("suffix", row.get("suffix1", ""))
        block = blocks.get(key_of(row))
        if block is None and spread:
            block, turn = order[turn % len(order)], turn + 1
        if block is None:
            builder.left_out[f"{path.name} rows about entities without an example"] += 1
            continue
        getattr(block, clause).append(FactRecord(prompt, answer))
        attached += 1
    return attached
