"""Turn observations into verdicts: per check (pass/fail, score, raw outputs), per metric and protocol.

A metric's total is kept per protocol and never averaged across protocols; an expectation
`efficacy >= 0.9` holds when every default protocol's total for efficacy meets it (checks run
alongside, such as `chat` on an instruct model, are reported but not read by it).

Each kind of check judges its own checks (`editspec.verify.kinds`); this module holds the
result types, the totals and the expectations' verdicts.

Example::

    results = [judge(c, seen[c.id], base[c.id], tokenizer) for c in checks]
    totals = metric_totals(results)          # {("efficacy", "compare"): Total(...), ...}
    verdicts = expectation_verdicts(spec, totals)
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace

from editspec import ir
from editspec.verify.checks import Check


@dataclass
class CheckResult:
    """The verdict on one check, with the raw outputs that led to it."""

    check: Check
    passed: bool
    score: float
    got: str
    scores: dict = field(default_factory=dict)
    baseline: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        c = self.check
        return {"id": c.id, "metric": c.metric, "protocol": c.protocol, "location": c.location, "file": c.file,
                "line": c.line, "column": c.column, "prompt": c.prompt, "expected": list(c.answers),
                "foils": list(c.foils), "got": self.got, "passed": self.passed, "score": self.score,
                "scores": self.scores, "baseline": self.baseline}


@dataclass(frozen=True)
class Total:
    """A metric's total under one protocol: mean score and how many checks passed."""

    metric: str
    protocol: str
    value: float
    passed: int
    count: int


@dataclass(frozen=True)
class Verdict:
    """Whether one `expect` line (or a preserve budget) holds, with the totals it looked at."""

    metric: str
    comparator: str
    value: float
    file: str
    line: int
    holds: bool
    totals: tuple[Total, ...]
    protocol: str | None = None

    @property
    def location(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def label(self) -> str:
        """`efficacy`, or `efficacy[chat]` for an expectation that names its protocol."""
        return f"{self.metric}[{self.protocol}]" if self.protocol else self.metric

    def reads(self, check: Check) -> bool:
        """Whether this expectation judges `check`: its metric, and its protocol or else a default one."""
        if check.metric != self.metric:
            return False
        return check.protocol == self.protocol if self.protocol else not check.alongside

    def to_json(self) -> dict:
        data = asdict(self)
        data["location"] = self.location
        return data


def compares(a: float, comparator: str, b: float) -> bool:
    """`a >= b` or `a <= b`, as the comparator says."""
    return a >= b if comparator == ">=" else a <= b


def judge(check: Check, seen: dict, base: dict, tokenizer=None) -> CheckResult:
    """The verdict on `check` from its observations on the model (`seen`) and the unedited one (`base`).

    Each kind of check judges its own (`editspec.verify.kinds`).
    """
    from editspec.verify.kinds import kind_of

    return kind_of(check).judge(check, seen, base, tokenizer)


def metric_totals(results: list[CheckResult]) -> dict[tuple[str, str], Total]:
    """Mean score and pass count per (metric, protocol), in first-seen order."""
    groups: dict[tuple[str, str], list[CheckResult]] = defaultdict(list)
    for r in results:
        groups[(r.check.metric, r.check.protocol)].append(r)
    return {key: Total(key[0], key[1], sum(r.score for r in rs) / len(rs), sum(r.passed for r in rs), len(rs))
            for key, rs in groups.items()}


def kept_by_basis(results: list[CheckResult]) -> dict[str, tuple[int, int]]:
    """Chat locality split by what the unedited reply said: {basis: (passed, count)}.

    "keep answer": the unedited model knew the keep fact; "key entity" and "first sentence":
    it did not, so what must stay is its own reply's entity or sentence.  A 135M model knows few
    zsRE keep facts, and a reply it makes up changes with any weight change, edit or not
    (docs/measurement.md#chat-locality); the split shows which of the two a locality total is.
    """
    split: dict[str, list[int]] = {}
    for r in results:
        if r.check.protocol == "chat" and r.check.agree and "kept" in r.scores:
            tally = split.setdefault(r.scores["kept"], [0, 0])
            tally[0] += int(r.passed)
            tally[1] += 1
    return {basis: (passed, count) for basis, (passed, count) in split.items()}


def expectation_verdicts(spec: ir.Spec, results: list[CheckResult]) -> list[Verdict]:
    """One verdict per `expect` line and per preserve budget (a budget is an expectation too).

    An expectation on a metric no check measured does not hold: the spec promised something
    the verifier cannot see.  `efficacy[chat] >= 0.9` reads the chat total only; an unqualified
    one every total of the metric's default protocols (not the checks run alongside).
    """
    totals = metric_totals(results)
    verdicts = []
    for e in spec.expect:
        unjudged = Verdict(e.metric, e.comparator, e.value, e.span.file, e.span.line, False, (), e.protocol)
        # Unqualified: the default protocols, as before the chat checks ran alongside them.
        read = {(r.check.metric, r.check.protocol) for r in results if unjudged.reads(r.check)}
        mine = tuple(t for key, t in totals.items() if key in read)
        holds = bool(mine) and all(compares(t.value, e.comparator, e.value) for t in mine)
        verdicts.append(replace(unjudged, holds=holds, totals=mine))
    from editspec.verify.kinds import KINDS, kind_of

    for kind in KINDS.values():
        mine = [r for r in results if kind_of(r.check) is kind]
        if kind.verdicts is not None and mine:
            verdicts += kind.verdicts(mine)
    return verdicts
