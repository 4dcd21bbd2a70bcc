"""Turn observations into verdicts: per check (pass/fail, score, raw outputs), per metric and protocol.

A metric's total is kept per protocol and never averaged across protocols; an expectation
`efficacy >= 0.9` holds when every default protocol's total for efficacy meets it (checks run
alongside, such as `chat` on an instruct model, are reported but not read by it).

Example::

    results = [judge(c, seen[c.id], base[c.id], tokenizer) for c in checks]
    totals = metric_totals(results)          # {("efficacy", "compare"): Total(...), ...}
    verdicts = expectation_verdicts(spec, totals)
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace

from editspec import ir
from editspec.verify import answers, protocols
from editspec.verify.checks import FLUENCY_DROP, Check
from editspec.verify.observe import scored_from_json


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


def _compares(a: float, comparator: str, b: float) -> bool:
    return a >= b if comparator == ">=" else a <= b


def _scored(check: Check, seen: dict, targets) -> list[protocols.Scored]:
    return [scored_from_json(check.prompt, t, seen["scored"][t]) for t in targets]


def _read(check: Check, generated: str) -> str:
    """What a generative check judges of a generation: a fact check's first sentence, else all of it."""
    return answers.first_sentence(generated) if check.max_new_tokens is not None else generated


def _agreement(check: Check, seen: dict, base: dict) -> tuple[bool, dict]:
    """Does the model's answer match the unedited model's? (KnowEdit's locality; docs/measurement.md#protocols)

    Teacher-forced argmax on the expected answer's tokens must equal the unedited argmax at
    every position; for `generate`, the normalised first sentences must be equal.
    """
    if check.protocol == "generate":
        now, before = _read(check, seen["generated"]), _read(check, base["generated"])
        same = protocols.normalise(now) == protocols.normalise(before)
        return same, {"unedited_generated": base["generated"]}
    answer = check.answers[0]
    now, before = seen["scored"][answer]["argmax"], base["scored"][answer]["argmax"]
    agree = sum(int(a == b) for a, b in zip(now, before)) / len(now)
    return agree == 1.0, {"agreement": agree, "unedited_argmax": before}


def _protocol_result(check: Check, seen: dict, tokenizer, base: dict | None = None) -> protocols.ProtocolResult:
    if check.protocol == "compare":
        return protocols.compare(_scored(check, seen, check.answers), _scored(check, seen, check.foils))
    if check.protocol == "teacher_forced":
        decode = tokenizer.decode if tokenizer is not None else None
        return protocols.teacher_forced(_scored(check, seen, check.answers), decode)
    if check.protocol == "logprob":
        return protocols.logprob(_scored(check, seen, check.answers), check.comparator, check.threshold)
    if check.protocol == "chat":
        if check.agree:  # locality: what the unedited reply said is still said, and no new object crept in
            unedited = (base or seen)["generated"]
            return answers.judge_kept(seen["generated"], unedited, check.answers, check.foils, check.prompt)
        return answers.judge_reply(seen["generated"], check.answers, check.foils)
    if check.protocol == "generate":
        if check.metric == "forget":  # forbidden strings: passing means *not* generated, anywhere
            result = protocols.generate(seen["generated"], check.answers)
            return protocols.ProtocolResult("generate", not result.passed, 1.0 - result.score, result.got,
                                            result.scores)
        # WILD-style: the first sentence of a free generation gives the answer and not the old object
        sentence = _read(check, seen["generated"])
        result = answers.judge_reply(sentence, check.answers, check.foils, protocol="generate")
        return protocols.ProtocolResult("generate", result.passed, result.score, seen["generated"],
                                        dict(result.scores, sentence=sentence))
    raise ValueError(f"no protocol {check.protocol!r}")


def judge(check: Check, seen: dict, base: dict, tokenizer=None) -> CheckResult:
    """The verdict on `check` from its observations on the model (`seen`) and the unedited one (`base`)."""
    if check.metric == "preserve":
        return _judge_preserve(check, seen, base)
    if check.metric == "fluency":
        return _judge_fluency(check, seen, base)
    result = _protocol_result(check, seen, tokenizer, base)
    unedited = _protocol_result(check, base, tokenizer, base)
    baseline = dict(unedited.scores, passed=unedited.passed, got=unedited.got)
    passed, score, scores = result.passed, result.score, dict(result.scores)
    if check.protocol == "chat":  # both models' raw replies, side by side in the report
        scores.update(generated=seen["generated"], unedited_generated=base["generated"])
    elif check.agree:  # locality and hard negatives: the answer wins *and* nothing moved
        agrees, detail = _agreement(check, seen, base)
        scores.update(detail, agrees_with_unedited=agrees)
        passed = passed and agrees
        score = float(passed)
    return CheckResult(check, passed, score, result.got, scores, baseline)


def _judge_preserve(check: Check, seen: dict, base: dict) -> CheckResult:
    if check.protocol == "kl":
        value = seen["kl"]
        scores = {"kl": value, "loss": seen["loss"], "unedited_loss": base["loss"], "tokens": seen["tokens"]}
    else:
        value = (seen["loss"] - base["loss"]) / base["loss"]
        scores = {"loss_increase": value, "loss": seen["loss"], "unedited_loss": base["loss"],
                  "tokens": seen["tokens"]}
    passed = _compares(value, check.comparator, check.threshold)
    return CheckResult(check, passed, value, f"{check.protocol}={value:.4g}", scores, {"loss": base["loss"]})


def _judge_fluency(check: Check, seen: dict, base: dict) -> CheckResult:
    value = sum(seen["entropies"]) / len(seen["entropies"])
    unedited = sum(base["entropies"]) / len(base["entropies"])
    if check.threshold is not None:
        passed = _compares(value, check.comparator, check.threshold)
    else:
        passed = value >= FLUENCY_DROP * unedited
    scores = {"entropy": value, "unedited_entropy": unedited, "texts": seen["texts"], "entropies": seen["entropies"]}
    return CheckResult(check, passed, value, f"entropy={value:.3f}", scores, {"entropy": unedited})


def metric_totals(results: list[CheckResult]) -> dict[tuple[str, str], Total]:
    """Mean score and pass count per (metric, protocol), in first-seen order."""
    groups: dict[tuple[str, str], list[CheckResult]] = defaultdict(list)
    for r in results:
        groups[(r.check.metric, r.check.protocol)].append(r)
    return {key: Total(key[0], key[1], sum(r.score for r in rs) / len(rs), sum(r.passed for r in rs), len(rs))
            for key, rs in groups.items()}


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
        holds = bool(mine) and all(_compares(t.value, e.comparator, e.value) for t in mine)
        verdicts.append(replace(unjudged, holds=holds, totals=mine))
    for r in results:
        if r.check.metric == "preserve":
            total = Total("preserve", r.check.protocol, r.score, int(r.passed), 1)
            verdicts.append(Verdict(f"preserve {r.check.protocol}", r.check.comparator, r.check.threshold,
                                    r.check.file, r.check.line, r.passed, (total,)))
    return verdicts
