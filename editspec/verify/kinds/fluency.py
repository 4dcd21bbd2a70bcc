"""Fluency: the n-gram entropy of seeded top-k samples after up to `FLUENCY_PROMPTS` of the spec's
prompts, at least `FLUENCY_SAMPLES` samples in all (a spec with one edit prompt samples it eight
times: one 50-token sample moved the figure by 10% either way); without an `expect fluency`
line, at least `FLUENCY_DROP` of the unedited entropy."""
from __future__ import annotations

from typing import Sequence

from editspec import ir
from editspec.verify.checks import FLUENCY_DROP, FLUENCY_PROMPTS, FLUENCY_SAMPLES, FLUENCY_TOKENS, Check, Plan
from editspec.verify.judge import CheckResult, compares
from editspec.verify.kinds import CheckKind
from editspec.verify.observe import ngram_entropy

TOP_K = 5


def derive(spec: ir.Spec, plans: Sequence[Plan]) -> list[Check]:
    prompts = [e.prompts[0] for e in spec.edits if e.prompts]
    prompts += [c.prompt for c in spec.canonical]
    prompts += [f.prompts[0] for f in spec.forget if f.prompts]
    prompts = list(dict.fromkeys(prompts))[:FLUENCY_PROMPTS]
    if not prompts:
        return []
    expectation = next((e for e in spec.expect if e.metric == "fluency"), None)
    span = expectation.span if expectation else ir.Span(file=spec.source, line=1, column=1, end_line=1, end_column=1)
    return [Check(id="fluency", metric="fluency", protocol="ngram_entropy", file=span.file, line=span.line,
                  column=span.column, comparator=expectation.comparator if expectation else ">=",
                  threshold=expectation.value if expectation else None, prompts=tuple(prompts))]


def observe(checks: Sequence[Check], observer, refs: dict) -> dict[str, dict]:
    seen = {}
    for c in checks:
        draws = -(-FLUENCY_SAMPLES // len(c.prompts))  # ceil: every prompt alike
        texts = observer.samples(c.prompts, max_new_tokens=FLUENCY_TOKENS, top_k=TOP_K, draws=draws)
        seen[c.id] = {"texts": texts, "entropies": [ngram_entropy(t) for t in texts]}
    return seen


def judge(check: Check, seen: dict, base: dict, tokenizer=None) -> CheckResult:
    value = sum(seen["entropies"]) / len(seen["entropies"])
    unedited = sum(base["entropies"]) / len(base["entropies"])
    if check.threshold is not None:
        passed = compares(value, check.comparator, check.threshold)
    else:
        passed = value >= FLUENCY_DROP * unedited
    scores = {"entropy": value, "unedited_entropy": unedited, "texts": seen["texts"], "entropies": seen["entropies"]}
    return CheckResult(check, passed, value, f"entropy={value:.3f}", scores, {"entropy": unedited})


def expected(check: Check) -> str:
    return f"{check.comparator} {check.threshold:g}" if check.threshold is not None else "≥ 90% of unedited"


KIND = CheckKind("fluency", ("fluency",), derive=derive, observe=observe, judge=judge, expected=expected)
