"""Writing imported records as a `.edit` spec: quoting, relation names, merging, locality filtering.

Importers turn records into `EditRecord`s and `CanonicalRecord`s and hand them to a
`SpecBuilder`; the builder names relations, merges repeated edits, leaves out what the language
would reject (conflicting edits, keep facts that contradict an edit) and counts what it left
out, so the importer can say so.  The text it renders is formatted with `editspec.lang.fmt`.

Example:
    >>> builder = SpecBuilder()
    >>> rel = builder.relation("P36", "The capital of {subject} is", prefix="p36")
    >>> builder.add_edit(EditRecord(rel, "France", "Lyon", old="Paris"))
    'added'
    >>> print(builder.render(["demo"]), end="")
    # demo
    <BLANKLINE>
    relation p36_the_capital_of_is {
      prompt "The capital of {subject} is"
    }
    <BLANKLINE>
    edit p36_the_capital_of_is("France") -> "Lyon" was "Paris"
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

from editspec.lang.literals import quote

def slug_words(text: str, limit: int = 6) -> list[str]:
    """Lower-case ASCII words of `text` (accents folded), at most `limit` of them."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    return re.findall(r"[a-z0-9]+", folded)[:limit]


def normalise(text: str) -> str:
    """How `editspec check` compares prompts and answers: whitespace collapsed, case folded."""
    return " ".join(text.split()).casefold()


@dataclass(frozen=True)
class FactRecord:
    """`"prompt" -> answer | aliases`."""

    prompt: str
    answer: str
    aliases: tuple[str, ...] = ()

    def usable(self) -> bool:
        return bool(self.prompt.strip() and self.answer.strip())


@dataclass
class EditRecord:
    """One edit of `relation(subject)`, with the clauses the language has for it."""

    relation: str
    subject: str
    target: str
    aliases: tuple[str, ...] = ()
    old: str | None = None
    scope: list[str] = field(default_factory=list)
    keep: list[FactRecord] = field(default_factory=list)
    implies: list[FactRecord] = field(default_factory=list)


@dataclass
class CanonicalRecord:
    """A `canonical` block: one example, likelihood checks and hard negatives."""

    name: str
    prompt: str
    answer: str
    over: str | None = None
    threshold: str = "1/5"
    checks: list[FactRecord] = field(default_factory=list)
    keep: list[FactRecord] = field(default_factory=list)


@dataclass
class _Relation:
    name: str
    prompt: str
    questions: list[str] = field(default_factory=list)


class SpecBuilder:
    """Collects relations, edits and canonical blocks; renders them as one formatted spec."""

    def __init__(self) -> None:
        self.relations: dict[object, _Relation] = {}
        self.edits: dict[tuple[str, str], EditRecord] = {}
        self.canonical: list[CanonicalRecord] = []
        self.left_out: Counter[str] = Counter()
        self._names: set[str] = set()
        self._canonical_names: set[str] = set()

    # -- relations ---------------------------------------------------------------------------
    def relation(self, key: object, prompt: str, *, prefix: str, question: str | None = None,
                 name: str | None = None) -> str:
        """The relation name for `key` (declared on first use, named `name` or after its prompt template).

        Different keys never share a name: a repeat gets `_2`, `_3`, ...
        """
        found = self.relations.get(key)
        if found is None:
            base = name or "_".join([prefix, *slug_words(prompt.replace("{subject}", " "))])
            name, n = base, 1
            while name in self._names:
                n += 1
                name = f"{base}_{n}"
            self._names.add(name)
            found = self.relations[key] = _Relation(name, prompt)
        if question and "{subject}" in question and question not in found.questions:
            found.questions.append(question)
        return found.name

    # -- edits -------------------------------------------------------------------------------
    def add_edit(self, edit: EditRecord) -> str:
        """Add an edit: "added", "merged" (same edit seen before: clauses joined) or "conflict"."""
        if not edit.subject.strip() or not edit.target.strip():
            self.left_out["records with an empty subject or new object"] += 1
            return "empty"
        edit.aliases = tuple(_unique(a for a in edit.aliases if a.strip() and a != edit.target))
        edit.scope = _unique(s for s in edit.scope if s.strip())
        edit.keep, edit.implies = _usable(edit.keep), _usable(edit.implies)
        if edit.old is not None and not edit.old.strip():
            edit.old = None
        key = (edit.relation, edit.subject)
        first = self.edits.get(key)
        if first is None:
            self.edits[key] = edit
            return "added"
        if first.target != edit.target:
            self.left_out["edits that conflict with an earlier edit of the same subject and prompt"] += 1
            return "conflict"
        first.aliases = tuple(_unique([*first.aliases, *edit.aliases]))
        first.scope = _unique([*first.scope, *edit.scope])
        first.keep = _unique([*first.keep, *edit.keep])
        first.implies = _unique([*first.implies, *edit.implies])
        return "merged"

    def add_canonical(self, block: CanonicalRecord) -> None:
        """Add a canonical block; a repeated name gets `-2`, `-3`, ..."""
        block.checks, block.keep = _usable(block.checks), _usable(block.keep)
        base, n = block.name, 1
        while block.name in self._canonical_names:
            n += 1
            block.name = f"{base}-{n}"
        self._canonical_names.add(block.name)
        self.canonical.append(block)

    # -- rendering ---------------------------------------------------------------------------
    def render(self, header: list[str], model: str | None = None) -> str:
        """The spec text, formatted; `header` lines become the opening comment."""
        from editspec.lang.fmt import format_text

        self._drop_contradicting_keeps()
        lines = [f"# {h}".rstrip() for h in header]
        if model:
            lines += ["", f"model {quote(model)}"]
        for relation in self.relations.values():
            lines += ["", f"relation {relation.name} {{", f"  prompt {quote(relation.prompt)}"]
            lines += [f"  question {quote(q)}" for q in relation.questions]
            lines.append("}")
        for edit in self.edits.values():
            lines += ["", *self._edit_lines(edit)]
        for block in self.canonical:
            lines += ["", *self._canonical_lines(block)]
        return format_text("\n".join(lines) + "\n", "<import>")

    def _edit_lines(self, edit: EditRecord) -> list[str]:
        head = f"edit {edit.relation}({quote(edit.subject)}) -> {_answer(edit.target, edit.aliases)}"
        if edit.old is not None:
            head += f" was {quote(edit.old)}"
        body = []
        if edit.scope:
            body += ["  scope {", *(f"    {quote(s)}" for s in edit.scope), "  }"]
        for clause, facts in (("keep", edit.keep), ("implies", edit.implies)):
            if facts:
                body += [f"  {clause} {{", *(f"    {_fact(f)}" for f in facts), "  }"]
        return [head + " {", *body, "}"] if body else [head]

    @staticmethod
    def _canonical_lines(block: CanonicalRecord) -> list[str]:
        over = f" over {quote(block.over)}" if block.over is not None else ""
        lines = [f"canonical {quote(block.name)} {{", f"  example {quote(block.prompt)} -> {quote(block.answer)}{over}"]
        if block.checks:
            lines += [f"  check p >= {block.threshold} {{", *(f"    {_fact(f)}" for f in block.checks), "  }"]
        if block.keep:
            lines += ["  keep {", *(f"    {_fact(f)}" for f in block.keep), "  }"]
        return [*lines, "}"]

    def _drop_contradicting_keeps(self) -> None:
        """A keep fact whose prompt another edit rewrites to a different answer cannot be kept."""
        answers_by_prompt: dict[str, set[str]] = {}
        templates = {r.name: r.prompt for r in self.relations.values()}
        for edit in self.edits.values():
            prompts = [templates[edit.relation].replace("{subject}", edit.subject), *edit.scope]
            for prompt in prompts:
                answers_by_prompt.setdefault(normalise(prompt), {normalise(a) for a in (edit.target, *edit.aliases)})
        for edit in self.edits.values():
            kept = [f for f in edit.keep if normalise(f.answer) in answers_by_prompt.get(normalise(f.prompt), {normalise(f.answer)})]
            self.left_out["keep facts that another edit in the file changes"] += len(edit.keep) - len(kept)
            edit.keep = kept


def _answer(target: str, aliases: tuple[str, ...]) -> str:
    return " | ".join(quote(a) for a in (target, *aliases))


def _fact(fact: FactRecord) -> str:
    return f"{quote(fact.prompt)} -> {_answer(fact.answer, fact.aliases)}"


def _usable(facts: list[FactRecord]) -> list[FactRecord]:
    cleaned = (FactRecord(f.prompt, f.answer, tuple(_unique(a for a in f.aliases if a.strip() and a != f.answer)))
               for f in facts if f.usable())
    return _unique(cleaned)


def _unique(items) -> list:
    return list(dict.fromkeys(items))
