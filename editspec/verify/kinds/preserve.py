"""Preservation: each `preserve` block's texts and files keep their loss (`loss_increase`, a
fraction) or their next-token distributions (`kl`, nats per token) within the block's budget,
against the unedited model.  A budget is an expectation too: each check adds a verdict."""
from __future__ import annotations

from typing import Sequence

from editspec import ir
from editspec.errors import EditspecError
from editspec.verify.checks import DEFAULT_LOSS_INCREASE, Check, Plan
from editspec.verify.judge import CheckResult, Total, Verdict, compares
from editspec.verify.kinds import CheckKind


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as error:
        raise EditspecError(f"cannot read preserve file {path}: {error.strerror}") from None


def derive(spec: ir.Spec, plans: Sequence[Plan]) -> list[Check]:
    checks = []
    for i, block in enumerate(spec.preserve):
        texts = (*block.texts, *(_read_text(p) for p in block.resolved_files))
        budget = block.budget
        metric, value = (budget.metric, budget.value) if budget else ("loss_increase", DEFAULT_LOSS_INCREASE)
        span = budget.span if budget else block.span
        checks.append(Check(id=f"preserve/{i}", metric="preserve", protocol=metric, file=span.file, line=span.line,
                            column=span.column, comparator="<=", threshold=value, texts=texts))
    return checks


def reference(checks: Sequence[Check], observer) -> dict:
    """The unedited model's log-distributions on each KL-budgeted block's texts (in memory only)."""
    return {c.id: observer.text_reference(c.texts) for c in checks if c.protocol == "kl"}


def observe(checks: Sequence[Check], observer, refs: dict) -> dict[str, dict]:
    return {c.id: observer.text_loss(c.texts, refs.get(c.id)) for c in checks}


def judge(check: Check, seen: dict, base: dict, tokenizer=None) -> CheckResult:
    if check.protocol == "kl":
        value = seen["kl"]
        scores = {"kl": value, "loss": seen["loss"], "unedited_loss": base["loss"], "tokens": seen["tokens"]}
    else:
        value = (seen["loss"] - base["loss"]) / base["loss"]
        scores = {"loss_increase": value, "loss": seen["loss"], "unedited_loss": base["loss"],
                  "tokens": seen["tokens"]}
    passed = compares(value, check.comparator, check.threshold)
    return CheckResult(check, passed, value, f"{check.protocol}={value:.4g}", scores, {"loss": base["loss"]})


def expected(check: Check) -> str:
    return f"{check.comparator} {check.threshold:g}"


def verdicts(results: list[CheckResult]) -> list[Verdict]:
    """One verdict per budget, at the budget's line."""
    return [Verdict(f"preserve {r.check.protocol}", r.check.comparator, r.check.threshold, r.check.file,
                    r.check.line, r.passed, (Total("preserve", r.check.protocol, r.score, int(r.passed), 1),))
            for r in results]


KIND = CheckKind("preserve", ("preserve",), derive=derive, observe=observe, judge=judge, expected=expected,
                 reference=reference, verdicts=verdicts)
