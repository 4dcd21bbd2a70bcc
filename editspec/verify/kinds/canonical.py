"""Canonical examples (Hewitt et al.): the example beats its `over`, `check p >= ...` thresholds
hold on held-out phrasings (`logprob`), and the block's `keep` facts (hard negatives) stay put."""
from __future__ import annotations

from typing import Sequence

from editspec import ir
from editspec.errors import EditspecError
from editspec.verify.checks import Check, Plan, prompt_checks
from editspec.verify.kinds import CheckKind, prompted


def _example_checks(example: ir.CanonicalExample) -> list[Check]:
    checks: list[Check] = []
    if example.over:
        checks += prompt_checks("canonical", example.id, example.span, (example.prompt,), (example.answer,),
                                (example.over,))
    for check in example.checks:
        if check.statistic != "p":
            raise EditspecError(f"the verifier knows the statistic `p`, not `{check.statistic}`")
        fact = check.fact
        checks += [Check(id=f"{check.id}/{i}", metric="canonical", protocol="logprob", file=fact.span.file,
                         line=fact.span.line, column=fact.span.column, prompt=prompt,
                         answers=(fact.answer, *fact.aliases), comparator=check.comparator, threshold=check.threshold)
                   for i, prompt in enumerate(fact.prompts)]
    for fact in example.keep:
        checks += prompt_checks("hard_negatives", fact.id, fact.span, fact.prompts, (fact.answer, *fact.aliases),
                                (example.answer,), agree=True)
    return checks


def derive(spec: ir.Spec, plans: Sequence[Plan]) -> list[Check]:
    return [c for example in spec.canonical for c in _example_checks(example)]


KIND = CheckKind("canonical", ("canonical", "hard_negatives"), derive=derive, observe=prompted.observe,
                 judge=prompted.judge, expected=prompted.expected)
