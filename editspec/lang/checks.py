"""Semantic checks on a built Spec: conflicts, contradictions, metrics, thresholds, backend settings.

Each check returns diagnostics; none raises, so that `editspec check` reports everything at once.
"""
from __future__ import annotations

from editspec import ir
from editspec.errors import Diagnostic, did_you_mean, suggest
from editspec.lang.lower import diagnostic
from editspec.lang.metrics import METRICS
from editspec.lang.syntax import line_of


def check_spec(spec: ir.Spec, texts: dict[str, str]) -> list[Diagnostic]:
    """Every semantic problem in `spec`; `texts` maps file paths to their text (for source lines)."""
    found: list[Diagnostic] = []

    def report(message: str, span: ir.Span, hint: str | None = None, severity: str = "error") -> None:
        d = diagnostic(message, span, hint, line_of(texts.get(span.file, ""), span.line))
        found.append(Diagnostic(d.message, d.location, d.hint, severity, d.source_line))

    for check in (_empty_strings, _edit_conflicts, _keep_contradictions, _expectations, _canonical, _erasures,
                  _backend_settings):
        check(spec, report)
    return found


def _where(span: ir.Span) -> str:
    return f"{span.file}:{span.line}"


def _empty_strings(spec: ir.Spec, report) -> None:
    for edit in spec.edits:
        if not edit.subject.strip():
            report("empty subject", edit.span, "write the entity whose fact changes, e.g. \"Twitter\"")
        if not edit.target.strip():
            report("empty new object", edit.span, "write what the fact becomes; to remove a fact use `forget`")
        for alias in edit.aliases:
            if not alias.strip():
                report("empty alias", edit.span)
        for fact in edit.keep + edit.implies:
            _empty_fact(fact, report)
    for example in spec.canonical:
        missing = (example.prompt, example.answer) == ("", "")  # no `example` at all: reported when loading
        if not missing and (not example.prompt.strip() or not example.answer.strip()):
            report("canonical example needs a prompt and an answer", example.span)
        for fact in [c.fact for c in example.checks] + list(example.keep):
            _empty_fact(fact, report)
    for erasure in spec.forget:
        if any(not p.strip() for p in erasure.prompts) or any(not n.strip() for n in erasure.never):
            report("empty string in forget block", erasure.span)


def _empty_fact(fact: ir.Fact, report) -> None:
    if fact.subject is not None and not fact.subject.strip():
        report("empty subject", fact.span)
    if any(not p.strip() for p in fact.prompts):
        report("empty prompt", fact.span)
    if not fact.answer.strip():
        report("empty answer", fact.span)


def _edit_conflicts(spec: ir.Spec, report) -> None:
    seen: dict[tuple[str, str], ir.Edit] = {}
    for edit in spec.edits:
        key = (edit.relation, edit.subject)
        first = seen.get(key)
        if first is None:
            seen[key] = edit
        elif first.target == edit.target:
            report(f"duplicate edit {edit.relation}(\"{edit.subject}\") -> \"{edit.target}\"", edit.span,
                   f"the same edit is at {_where(first.span)}; remove one")
        else:
            report(f"conflicting edits: {edit.relation}(\"{edit.subject}\") -> \"{edit.target}\" here, "
                   f"but -> \"{first.target}\" at {_where(first.span)}", edit.span,
                   "a subject can have one new object per relation; keep one of the two")


def _answers(edit: ir.Edit) -> set[str]:
    return {fold_text(a) for a in (edit.target, *edit.aliases)}


def fold_text(text: str) -> str:
    """How the checks compare prompts and answers: whitespace collapsed, case folded.

    >>> fold_text("  New   York ") == fold_text("new york")
    True
    """
    return " ".join(text.split()).casefold()


def _keep_contradictions(spec: ir.Spec, report) -> None:
    by_key = {(e.relation, e.subject): e for e in spec.edits}
    by_prompt: dict[str, ir.Edit] = {}
    for edit in spec.edits:
        for prompt in edit.prompts + edit.paraphrases + edit.scope:
            by_prompt.setdefault(fold_text(prompt), edit)
    facts = [f for e in spec.edits for f in e.keep] + [f for c in spec.canonical for f in c.keep]
    for fact in facts:
        edit = by_key.get((fact.relation, fact.subject)) if fact.relation else None
        if edit is None:
            edit = next((by_prompt[fold_text(p)] for p in fact.prompts if fold_text(p) in by_prompt), None)
        if edit is not None and fold_text(fact.answer) not in _answers(edit):
            report(f"keep contradicts an edit: this says \"{fact.answer}\" must stay, but the edit at "
                   f"{_where(edit.span)} changes it to \"{edit.target}\"", fact.span,
                   "remove the keep constraint, or the edit")


def _expectations(spec: ir.Spec, report) -> None:
    for expectation in spec.expect:
        metric = METRICS.get(expectation.metric)
        if metric is None:
            report(f"unknown metric `{expectation.metric}`", expectation.span, did_you_mean(expectation.metric, METRICS))
            continue
        if expectation.protocol is not None and expectation.protocol not in metric.protocols:
            report(f"`{metric.name}` is not measured under `{expectation.protocol}`", expectation.span,
                   f"`{metric.name}` is measured under " + ", ".join(f"`{p}`" for p in metric.protocols)
                   if metric.protocols else f"`{metric.name}` is measured one way only: write `{metric.name} "
                   f"{expectation.comparator} {expectation.value:g}`")
            continue
        if not metric.low <= expectation.value <= metric.high:
            upper = "" if metric.high == float("inf") else f" and {metric.high:g}"
            report(f"threshold {expectation.value:g} for `{metric.name}` is outside its range "
                   f"({metric.low:g}{upper or ' or more'})", expectation.span,
                   "write a fraction such as 0.95, or a percentage such as 95%" if metric.high == 1.0 else None)
    for preservation in spec.preserve:
        budget = preservation.budget
        if budget is not None and budget.value < 0:
            report("a budget must not be negative", budget.span)
        if not preservation.texts and not preservation.files:
            report("preserve block has no `text` or `file` to preserve", preservation.span,
                   'add `file "general.txt"` or `text "..."`')


def _canonical(spec: ir.Spec, report) -> None:
    names: dict[str, ir.CanonicalExample] = {}
    for example in spec.canonical:
        if example.name in names:
            report(f"duplicate canonical block `{example.name}`", example.span,
                   f"the first is at {_where(names[example.name].span)}")
        names.setdefault(example.name, example)
        if example.over is not None and fold_text(example.over) == fold_text(example.answer):
            report("`over` names the same continuation as the answer", example.span)
        for check in example.checks:
            if check.statistic != "p":
                report(f"unknown check statistic `{check.statistic}`", check.span,
                       "canonical checks compare `p`, the probability of the answer")
            elif not 0.0 <= check.threshold <= 1.0:
                report(f"probability threshold {check.threshold_text} is outside 0..1", check.span)


def _erasures(spec: ir.Spec, report) -> None:
    names: dict[str, ir.Erasure] = {}
    for erasure in spec.forget:
        if erasure.name in names:
            report(f"duplicate forget block `{erasure.name}`", erasure.span,
                   f"the first is at {_where(names[erasure.name].span)}")
        names.setdefault(erasure.name, erasure)
        if not erasure.prompts:
            report(f"forget `{erasure.name}` has no `prompt`", erasure.span, 'add `prompt "..."`')
        if not erasure.never:
            report(f"forget `{erasure.name}` has no `never`", erasure.span, 'add `never "..."`: what must not be produced')


def _backend_settings(spec: ir.Spec, report) -> None:
    from editspec.build.registry import DESIGNED_BACKENDS, backends

    table = backends()
    for block in spec.backends:
        entry = table.get(block.name)
        if entry is None and block.name in DESIGNED_BACKENDS:
            continue
        if entry is None:
            close = suggest(block.name, [*table, *DESIGNED_BACKENDS])
            if close:
                report(f"unknown backend `{block.name}`", block.span, f"did you mean `{close}`?")
            else:
                report(f"backend `{block.name}` is not installed; its settings are not checked", block.span,
                       f"installed: {', '.join(sorted(table)) or 'none'}", severity="warning")
            continue
        fields = entry.config_class().model_fields
        for setting in block.settings:
            if setting.key not in fields:
                report(f"backend `{block.name}` has no setting `{setting.key}`", setting.span,
                       did_you_mean(setting.key, fields))
