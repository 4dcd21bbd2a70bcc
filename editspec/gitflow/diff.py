"""Semantic diff of two versions of a spec: what the edits, checks and settings now mean.

Edits are matched by identity, `relation(subject)`, not by their content-derived ids, so an
edit whose new object changed shows up as *changed* (with what changed), not as one removed and
one added.  Canonical and forget blocks are matched by name, expectations by metric and protocol (`efficacy` and `efficacy[chat]` are two), backend
blocks by backend, relations by name.  Positions, comments and formatting never show.

Example:
    >>> from editspec.lang.resolve import load_spec
    >>> old = load_spec("a.edit", text='relation r { prompt "R of {subject}:" }\\nedit r("A") -> "B"')
    >>> new = load_spec("a.edit", text='relation r { prompt "R of {subject}:" }\\nedit r("A") -> "C"')
    >>> diff_specs(old, new).edits.changed[0].changes
    {'new object': {'old': '"B"', 'new': '"C"'}}
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

from editspec import ir
from editspec.lang.literals import quote


@dataclass
class Changed:
    """One matched item whose meaning changed: `changes` maps an aspect to old/new or added/removed."""

    key: str
    changes: dict[str, dict[str, Any]]


@dataclass
class Section:
    """Added, removed and changed items of one kind (edits, expectations, ...)."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[Changed] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


SECTIONS = ("model", "relations", "edits", "canonical", "forget", "preserve", "expect", "backends")


@dataclass
class SpecDiff:
    """The semantic difference between two versions of one spec (either may be absent)."""

    model: Section = field(default_factory=Section)
    relations: Section = field(default_factory=Section)
    edits: Section = field(default_factory=Section)
    canonical: Section = field(default_factory=Section)
    forget: Section = field(default_factory=Section)
    preserve: Section = field(default_factory=Section)
    expect: Section = field(default_factory=Section)
    backends: Section = field(default_factory=Section)

    def __bool__(self) -> bool:
        return any(getattr(self, name) for name in SECTIONS)

    def to_dict(self) -> dict[str, Any]:
        return {name: asdict(getattr(self, name)) for name in SECTIONS}

    def counts(self) -> dict[str, dict[str, int]]:
        return {name: {k: len(v) for k, v in asdict(getattr(self, name)).items()}
                for name in SECTIONS if getattr(self, name)}


# -- how items read and compare --------------------------------------------------------------
def answer_text(answer: str, aliases: Iterable[str]) -> str:
    return " | ".join(quote(a) for a in (answer, *aliases))


def fact_text(fact: ir.Fact) -> str:
    """A fact as written: `rel("subject") -> "answer"` or `"prompt" -> "answer"`."""
    head = f"{fact.relation}({quote(fact.subject or '')})" if fact.relation else quote(fact.prompts[0] if fact.prompts else "")
    return f"{head} -> {answer_text(fact.answer, fact.aliases)}"


def edit_key(edit: ir.Edit) -> str:
    return f"{edit.relation}({quote(edit.subject)})"


def edit_text(edit: ir.Edit) -> str:
    return f"{edit_key(edit)} -> {answer_text(edit.target, edit.aliases)}"


def _set_change(old: Iterable[str], new: Iterable[str]) -> dict[str, list[str]] | None:
    old, new = list(dict.fromkeys(old)), list(dict.fromkeys(new))
    added, removed = [x for x in new if x not in old], [x for x in old if x not in new]
    return {"added": added, "removed": removed} if added or removed else None


def _value_change(old: Any, new: Any) -> dict[str, Any] | None:
    return {"old": old, "new": new} if old != new else None


def _changes(pairs: list[tuple[str, dict[str, Any] | None]]) -> dict[str, dict[str, Any]]:
    return {name: change for name, change in pairs if change}


def _match(old: Iterable, new: Iterable, key: Callable, text: Callable, compare: Callable) -> Section:
    """Items matched by `key`: unmatched are added/removed, matched ones compared aspect by aspect."""
    old_by, new_by = {key(x): x for x in old}, {key(x): x for x in new}
    section = Section(added=[text(x) for k, x in new_by.items() if k not in old_by],
                      removed=[text(x) for k, x in old_by.items() if k not in new_by])
    for k, item in new_by.items():
        if k in old_by:
            changes = compare(old_by[k], item)
            if changes:
                section.changed.append(Changed(k, changes))
    return section


# -- comparisons per kind ------------------------------------------------------------------
def _compare_edits(a: ir.Edit, b: ir.Edit) -> dict[str, dict[str, Any]]:
    return _changes([
        ("new object", _value_change(answer_text(a.target, a.aliases), answer_text(b.target, b.aliases))),
        ("was", _value_change(a.old, b.old)),
        ("prompts", _set_change(map(quote, a.prompts + a.paraphrases + a.questions),
                                map(quote, b.prompts + b.paraphrases + b.questions))),
        ("scope", _set_change(map(quote, a.scope), map(quote, b.scope))),
        ("keep", _set_change(map(fact_text, a.keep), map(fact_text, b.keep))),
        ("implies", _set_change(map(fact_text, a.implies), map(fact_text, b.implies))),
    ])


def _relation_templates(r: ir.Relation) -> list[str]:
    return [f"prompt {quote(t)}" for t in r.prompts] + [f"paraphrase {quote(t)}" for t in r.paraphrases] + \
        [f"question {quote(t)}" for t in r.questions]


def _check_text(check: ir.CanonicalCheck) -> str:
    return f"{check.statistic} {check.comparator} {check.threshold_text}: {fact_text(check.fact)}"


def _compare_canonical(a: ir.CanonicalExample, b: ir.CanonicalExample) -> dict[str, dict[str, Any]]:
    def example(c: ir.CanonicalExample) -> str:
        return f"{quote(c.prompt)} -> {quote(c.answer)}" + (f" over {quote(c.over)}" if c.over is not None else "")

    return _changes([
        ("example", _value_change(example(a), example(b))),
        ("checks", _set_change(map(_check_text, a.checks), map(_check_text, b.checks))),
        ("keep", _set_change(map(fact_text, a.keep), map(fact_text, b.keep))),
    ])


def _preserve_items(p: ir.Preservation) -> list[str]:
    items = [f"file {quote(f)}" for f in p.files] + [f"text {quote(t)}" for t in p.texts]
    if p.budget is not None:
        items.append(f"budget {p.budget.metric} <= {p.budget.value:g}")
    return items


def _expect_text(e: ir.Expectation) -> str:
    return f"{e.label} {e.comparator} {e.value:g}"


def _setting_text(value: Any) -> str:
    if isinstance(value, ir.Range):
        return f"{value.start}..{value.end}"
    return quote(value) if isinstance(value, str) else repr(value)


def _backend_text(b: ir.BackendSettings) -> str:
    return f"{b.name} {{ " + "  ".join(f"{s.key} {_setting_text(s.value)}" for s in b.settings) + " }"


def _compare_backends(a: ir.BackendSettings, b: ir.BackendSettings) -> dict[str, dict[str, Any]]:
    old, new = a.as_dict(), b.as_dict()
    return {key: {"old": _setting_text(old[key]) if key in old else None,
                  "new": _setting_text(new[key]) if key in new else None}
            for key in dict.fromkeys([*old, *new]) if old.get(key) != new.get(key)}


def diff_specs(old: ir.Spec | None, new: ir.Spec | None) -> SpecDiff:
    """What changed from `old` to `new` (None: the spec did not exist on that side)."""
    empty = ir.Spec(source="", files=())
    old, new = old or empty, new or empty
    diff = SpecDiff()
    if old.model != new.model:
        diff.model = Section(added=[new.model] if new.model else [], removed=[old.model] if old.model else [])
    diff.relations = _match(old.relations, new.relations, lambda r: r.name, lambda r: r.name,
                            lambda a, b: _changes([("templates", _set_change(_relation_templates(a), _relation_templates(b)))]))
    diff.edits = _match(old.edits, new.edits, edit_key, edit_text, _compare_edits)
    diff.canonical = _match(old.canonical, new.canonical, lambda c: c.name, lambda c: quote(c.name), _compare_canonical)
    diff.forget = _match(old.forget, new.forget, lambda f: f.name, lambda f: quote(f.name), lambda a, b: _changes([
        ("prompts", _set_change(map(quote, a.prompts), map(quote, b.prompts))),
        ("never", _set_change(map(quote, a.never), map(quote, b.never)))]))
    preserve = _set_change([i for p in old.preserve for i in _preserve_items(p)],
                           [i for p in new.preserve for i in _preserve_items(p)])
    if preserve:
        diff.preserve = Section(added=preserve["added"], removed=preserve["removed"])
    diff.expect = _match(old.expect, new.expect, lambda e: e.label, _expect_text, lambda a, b: _changes([
        ("threshold", _value_change(f"{a.comparator} {a.value:g}", f"{b.comparator} {b.value:g}"))]))
    diff.backends = _match(old.backends, new.backends, lambda b: b.name, _backend_text, _compare_backends)
    return diff


def render_text(diff: SpecDiff) -> list[str]:
    """Lines of the human-readable diff: `+` added, `-` removed, `~` changed (with its aspects)."""
    lines = []
    for name in SECTIONS:
        section: Section = getattr(diff, name)
        label = {"expect": "expect", "edits": "edit", "relations": "relation", "backends": "backend"}.get(name, name)
        lines += [f"  + {label} {item}" for item in section.added]
        lines += [f"  - {label} {item}" for item in section.removed]
        for changed in section.changed:
            lines.append(f"  ~ {label} {changed.key}")
            for aspect, change in changed.changes.items():
                if "old" in change:
                    lines.append(f"      {aspect}: {change['old']} -> {change['new']}")
                else:
                    lines += [f"      {aspect} + {x}" for x in change["added"]]
                    lines += [f"      {aspect} - {x}" for x in change["removed"]]
    return lines
