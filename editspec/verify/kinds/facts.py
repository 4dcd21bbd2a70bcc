"""Fact checks: an edit's efficacy, generalization, locality (`keep`) and portability (`implies`).

Each pass of `plans` derives them under one protocol (the default one, then any run alongside,
such as `chat`); chat asks the relation's `question` templates where it has them, else the
prompts themselves.
"""
from __future__ import annotations

from typing import Sequence

from editspec import ir
from editspec.lang.checks import fold_text
from editspec.verify.checks import FACT_METRICS, Check, Plan, fact_protocol, prompt_checks
from editspec.verify.kinds import CheckKind, prompted


def _questions(fact: ir.Fact, relations: dict[str, ir.Relation]) -> tuple[str, ...]:
    relation = relations.get(fact.relation) if fact.relation else None
    if relation is None or fact.subject is None:
        return ()
    return tuple(q.replace("{subject}", fact.subject) for q in relation.questions)


def _edit_checks(edit: ir.Edit, plan: Plan, relations: dict[str, ir.Relation]) -> list[Check]:
    """The fact checks of one edit under `plan`."""
    chat = fact_protocol(plan.protocol, False) == "chat"
    answers = (edit.target, *edit.aliases)
    was = (edit.old,) if edit.old else ()
    checks = prompt_checks("efficacy", edit.id, edit.span, (chat and edit.questions) or edit.prompts, answers, was,
                           plan=plan)
    checks += prompt_checks("generalization", edit.id, edit.span, (*edit.scope, *edit.paraphrases), answers, was,
                            plan=plan)
    for fact in edit.keep:
        kept = (fact.answer, *fact.aliases)
        # A kept fact may share the edit's new object ("the Colosseum is in Rome" while the Eiffel
        # Tower moves to Rome): such an answer cannot be its own foil.
        foils = tuple(a for a in answers if fold_text(a) not in {fold_text(k) for k in kept})
        prompts = (chat and _questions(fact, relations)) or fact.prompts
        checks += prompt_checks("locality", fact.id, fact.span, prompts, kept, foils, agree=True, plan=plan)
    for fact in edit.implies:
        prompts = (chat and _questions(fact, relations)) or fact.prompts
        checks += prompt_checks("portability", fact.id, fact.span, prompts, (fact.answer, *fact.aliases), (),
                                plan=plan)
    return checks


def derive(spec: ir.Spec, plans: Sequence[Plan]) -> list[Check]:
    relations = {r.name: r for r in spec.relations}
    return [c for edit in spec.edits for plan in plans for c in _edit_checks(edit, plan, relations)]


KIND = CheckKind("facts", FACT_METRICS, derive=derive, observe=prompted.observe, judge=prompted.judge,
                 expected=prompted.expected)
