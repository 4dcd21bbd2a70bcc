"""Check kinds: each says how its checks are derived, observed, judged and rendered, in one place.

A kind is a `CheckKind` registered here; the engine, the reports and every observer go
through this registry instead of branching on metric names, so a new kind of check is one
new module and one line in `_MODULES` (docs/adding-a-check.md walks through it).

| kind | metrics | observes | judged by |
|---|---|---|---|
| `facts` | efficacy, generalization, locality, portability | its protocol's primitive | its protocol |
| `canonical` | canonical, hard_negatives | scores | `compare`, `logprob` |
| `forget` | forget | scores and short generations | nothing forbidden is likely or said |
| `preserve` | preserve | text loss (and KL against the unedited model) | the budget |
| `fluency` | fluency | seeded samples | n-gram entropy |

Kinds run in registry order, which is the order checks appear in reports (spec order within
a kind).

Example::

    kind_of(check).judge(check, seen[check.id], base[check.id], tokenizer)   # -> CheckResult
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from editspec import ir
from editspec.verify.checks import Check, Plan


@dataclass(frozen=True)
class CheckKind:
    """One kind of check: a name, its metrics and the four things the verifier does with its checks.

    - `derive(spec, plans)`: the checks the spec implies (`plans`: the fact checks' passes);
    - `observe(checks, observer, references)`: JSON data per check id, from an `Observer`;
    - `judge(check, seen, base, tokenizer)`: a `CheckResult` from the model's and the unedited
      model's data;
    - `expected(check)`: what the check expects, as the reports print it.

    Optional: `reference(checks, observer)` is taken from the unedited model before the edit
    (kept in memory, never cached) and handed to `observe`; `verdicts(results)` adds verdicts
    of the kind's own (a preserve budget is an expectation too).
    """

    name: str
    metrics: tuple[str, ...]
    derive: Callable[[ir.Spec, Sequence[Plan]], list[Check]]
    observe: Callable[[Sequence[Check], Any, dict], dict[str, dict]]
    judge: Callable[[Check, dict, dict, Any], Any]
    expected: Callable[[Check], str]
    reference: Callable[[Sequence[Check], Any], dict] | None = None
    verdicts: Callable[[list], list] | None = None


KINDS: dict[str, CheckKind] = {}
_BY_METRIC: dict[str, CheckKind] = {}


def register(kind: CheckKind) -> CheckKind:
    """Add `kind` to the registry; a kind or a metric registered twice is a programming error."""
    if kind.name in KINDS:
        raise ValueError(f"check kind {kind.name!r} is registered twice")
    taken = [m for m in kind.metrics if m in _BY_METRIC]
    if taken:
        raise ValueError(f"metric(s) {', '.join(taken)} of kind {kind.name!r} belong to {_BY_METRIC[taken[0]].name!r}")
    KINDS[kind.name] = kind
    _BY_METRIC.update({m: kind for m in kind.metrics})
    return kind


def kind_of(check: Check) -> CheckKind:
    """The kind a check belongs to, by its metric."""
    try:
        return _BY_METRIC[check.metric]
    except KeyError:
        raise ValueError(f"no check kind measures {check.metric!r}") from None


def _grouped(checks: Sequence[Check]) -> dict[str, list[Check]]:
    groups: dict[str, list[Check]] = {}
    for c in checks:
        groups.setdefault(kind_of(c).name, []).append(c)
    return groups


def derive_all(spec: ir.Spec, plans: Sequence[Plan]) -> list[Check]:
    """Every kind's checks of `spec`, kind after kind."""
    return [c for kind in KINDS.values() for c in kind.derive(spec, plans)]


def references(checks: Sequence[Check], observer) -> dict[str, Any]:
    """What each kind keeps from the unedited model before the edit (e.g. KL reference distributions)."""
    found: dict[str, Any] = {}
    for name, mine in _grouped(checks).items():
        if KINDS[name].reference is not None:
            found.update(KINDS[name].reference(mine, observer))
    return found


def observe_all(checks: Sequence[Check], observer, refs: dict | None = None) -> dict[str, dict]:
    """Every check's observations on `observer`, each kind's checks in one batch."""
    seen: dict[str, dict] = {}
    for name, mine in _grouped(checks).items():
        seen.update(KINDS[name].observe(mine, observer, refs or {}))
    return seen


# The kinds, in report order.  A new kind: a module with a `KIND = CheckKind(...)`, named here.
_MODULES = ("facts", "canonical", "forget", "preserve", "fluency")
for _module in _MODULES:
    register(importlib.import_module(f"editspec.verify.kinds.{_module}").KIND)
