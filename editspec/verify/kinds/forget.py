"""Erasures: after each `forget` prompt, every `never` string is unlikely (`logprob`, P <= 0.05)
and none is generated (`generate`, a few tokens past the longest string, judged whole)."""
from __future__ import annotations

from typing import Sequence

from editspec import ir
from editspec.verify.checks import FORGET_MAX_P, Check, Plan
from editspec.verify.kinds import CheckKind, prompted


def derive(spec: ir.Spec, plans: Sequence[Plan]) -> list[Check]:
    checks = []
    for erasure in spec.forget:
        span = erasure.span
        for i, prompt in enumerate(erasure.prompts):
            common = dict(metric="forget", file=span.file, line=span.line, column=span.column, prompt=prompt,
                          answers=erasure.never)
            checks.append(Check(id=f"{erasure.id}/forget/{i}/logprob", protocol="logprob", comparator="<=",
                                threshold=FORGET_MAX_P, **common))
            checks.append(Check(id=f"{erasure.id}/forget/{i}/generate", protocol="generate", **common))
    return checks


def expected(check: Check) -> str:
    return "not " + " | ".join(check.answers)


KIND = CheckKind("forget", ("forget",), derive=derive, observe=prompted.observe, judge=prompted.judge,
                 expected=expected)
