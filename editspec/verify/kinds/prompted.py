"""What the prompt-asking kinds share (facts, canonical, forget): observe and judge by protocol.

A prompted check asks its prompt and reads the answer under its protocol: teacher-forced
scores of its answers and foils (`compare`, `teacher_forced`, `logprob`), a free generation
(`generate`) or a chat reply (`chat`); `agree` checks (locality, hard negatives) must also say
what the unedited model said.
"""
from __future__ import annotations

from typing import Sequence

from editspec.verify import answers, protocols
from editspec.verify.checks import Check
from editspec.verify.judge import CheckResult
from editspec.verify.observe import scored_from_json, scored_to_json

SCORED = ("compare", "teacher_forced", "logprob")
GENERATIVE = ("generate", "chat")


def observe(checks: Sequence[Check], observer, refs: dict | None = None) -> dict[str, dict]:
    """Each check's scores, generation or chat reply; every kind of request batched once."""
    pairs = [(c.prompt, t) for c in checks if c.protocol in SCORED for t in (*c.answers, *c.foils)]
    scored = dict(zip(pairs, observer.score(pairs))) if pairs else {}
    asked = [c for c in checks if c.protocol == "generate"]
    generated = observer.generated(asked) if asked else {}
    chatted = [c for c in checks if c.protocol == "chat"]
    replies = observer.replies(chatted) if chatted else {}
    seen: dict[str, dict] = {}
    for c in checks:
        if c.protocol in SCORED:
            seen[c.id] = {"scored": {t: scored_to_json(scored[(c.prompt, t)]) for t in (*c.answers, *c.foils)}}
        elif c.protocol == "generate":
            seen[c.id] = {"generated": generated[c.id]}
        elif c.protocol == "chat":
            seen[c.id] = {"generated": replies[c.id]}
        else:
            raise ValueError(f"no protocol {c.protocol!r}")
    return seen


def _scored(check: Check, seen: dict, targets) -> list[protocols.Scored]:
    return [scored_from_json(check.prompt, t, seen["scored"][t]) for t in targets]


def _agreement(check: Check, seen: dict, base: dict) -> tuple[bool, dict]:
    """Does the model's answer match the unedited model's? (KnowEdit's locality; docs/measurement.md#protocols)

    Teacher-forced argmax on the expected answer's tokens must equal the unedited argmax at
    every position.  (The generative protocols compare the two models' answers in `judge_kept`.)
    """
    answer = check.answers[0]
    now, before = seen["scored"][answer]["argmax"], base["scored"][answer]["argmax"]
    agree = sum(int(a == b) for a, b in zip(now, before)) / len(now)
    return agree == 1.0, {"agreement": agree, "unedited_argmax": before}


def protocol_result(check: Check, seen: dict, tokenizer, base: dict | None = None) -> protocols.ProtocolResult:
    """What the check's protocol concludes from `seen` (`base`: the unedited data, for chat locality)."""
    if check.protocol == "compare":
        return protocols.compare(_scored(check, seen, check.answers), _scored(check, seen, check.foils))
    if check.protocol == "teacher_forced":
        decode = tokenizer.decode if tokenizer is not None else None
        return protocols.teacher_forced(_scored(check, seen, check.answers), decode)
    if check.protocol == "logprob":
        return protocols.logprob(_scored(check, seen, check.answers), check.comparator, check.threshold)
    if check.protocol in GENERATIVE and check.agree:
        # locality: what the unedited model's first sentence said is still said, and no new object crept in
        unedited = (base or seen)["generated"]
        return answers.judge_kept(seen["generated"], unedited, check.answers, check.foils, check.prompt,
                                  protocol=check.protocol)
    if check.protocol == "chat":  # the first sentence answers; nothing in the reply takes it back
        return answers.judge_reply(seen["generated"], check.answers, check.foils)
    if check.protocol == "generate":
        if check.metric == "forget":  # forbidden strings: passing means *not* generated, anywhere
            result = protocols.generate(seen["generated"], check.answers)
            return protocols.ProtocolResult("generate", not result.passed, 1.0 - result.score, result.got,
                                            result.scores)
        # WILD-style: the first sentence of a free generation answers, and nothing after takes it back
        return answers.judge_reply(seen["generated"], check.answers, check.foils, protocol="generate")
    raise ValueError(f"no protocol {check.protocol!r}")


def judge(check: Check, seen: dict, base: dict, tokenizer=None) -> CheckResult:
    """The verdict on `check` from its observations on the model (`seen`) and the unedited one (`base`)."""
    result = protocol_result(check, seen, tokenizer, base)
    unedited = protocol_result(check, base, tokenizer, base)
    baseline = dict(unedited.scores, passed=unedited.passed, got=unedited.got)
    passed, score, scores = result.passed, result.score, dict(result.scores)
    if check.protocol == "chat":  # both models' raw replies, side by side in the report
        scores.update(generated=seen["generated"], unedited_generated=base["generated"])
    if check.protocol in GENERATIVE and check.agree:  # generative locality is itself the comparison
        scores.update(unedited_generated=base["generated"], agrees_with_unedited=result.passed)
    elif check.agree:  # locality and hard negatives: the answer wins *and* nothing moved
        agrees, detail = _agreement(check, seen, base)
        scores.update(detail, agrees_with_unedited=agrees)
        passed = passed and agrees
        score = float(passed)
    return CheckResult(check, passed, score, result.got, scores, baseline)


def expected(check: Check) -> str:
    """The answers, what they must beat (`compare`) or never say (`chat`), and a `logprob` threshold."""
    head = " | ".join(check.answers)
    if check.foils and check.protocol == "chat":
        head += ", never " + " | ".join(check.foils)
    elif check.foils:
        head += " over " + " | ".join(check.foils)
    if check.protocol == "logprob":
        head += f" (p {check.comparator} {check.threshold:g})"
    return head
