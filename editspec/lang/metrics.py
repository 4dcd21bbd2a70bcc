"""The metrics a spec's `expect` block may name, with their ranges, meaning and protocols.

An expectation may name the protocol whose total it reads, `efficacy[chat] >= 0.9`; the
protocols a metric can be measured under are listed with it (`Metric.protocols`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

# Every evaluation protocol the verifier knows (editspec.verify.protocols describes each).
PROTOCOLS = ("compare", "teacher_forced", "generate", "logprob", "chat")
_FACT = PROTOCOLS


@dataclass(frozen=True)
class Metric:
    name: str
    low: float
    high: float
    description: str
    protocols: tuple[str, ...] = _FACT


METRICS: dict[str, Metric] = {m.name: m for m in [
    Metric("efficacy", 0.0, 1.0, "fraction of edit prompts that now give the new object"),
    Metric("generalization", 0.0, 1.0, "fraction of scope prompts and relation paraphrases that give the new object"),
    Metric("locality", 0.0, 1.0, "fraction of keep constraints that still hold"),
    Metric("portability", 0.0, 1.0, "fraction of implied consequences that follow"),
    Metric("fluency", 0.0, math.inf, "n-gram entropy of generations (higher is more fluent; ~5-6 is typical)", ()),
    Metric("canonical", 0.0, 1.0, "fraction of canonical-example checks that pass", ("compare", "logprob")),
    Metric("hard_negatives", 0.0, 1.0, "fraction of canonical hard negatives (keep) that still hold", ("compare",)),
    Metric("forget", 0.0, 1.0, "fraction of erasures that hold (the forbidden text is neither likely nor generated)",
           ("logprob", "generate")),
]}
