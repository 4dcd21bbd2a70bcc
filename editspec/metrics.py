"""The metrics a spec's `expect` block may name, with their ranges and meaning."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    low: float
    high: float
    description: str


METRICS: dict[str, Metric] = {m.name: m for m in [
    Metric("efficacy", 0.0, 1.0, "fraction of edit prompts that now give the new object"),
    Metric("generalization", 0.0, 1.0, "fraction of scope prompts and relation paraphrases that give the new object"),
    Metric("locality", 0.0, 1.0, "fraction of keep constraints that still hold"),
    Metric("portability", 0.0, 1.0, "fraction of implied consequences that follow"),
    Metric("fluency", 0.0, math.inf, "n-gram entropy of generations (higher is more fluent; ~5-6 is typical)"),
    Metric("canonical", 0.0, 1.0, "fraction of canonical-example checks that pass"),
    Metric("hard_negatives", 0.0, 1.0, "fraction of canonical hard negatives (keep) that still hold"),
    Metric("forget", 0.0, 1.0, "fraction of erasures that hold (the forbidden text is neither likely nor generated)"),
]}
