"""benchmarks/bench_canonical.py: the success criterion, the loss rise and the evaluation order (no model)."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
bench = pytest.importorskip("bench_canonical")

from editspec.verify.protocols import Scored  # noqa: E402


def _scored(*logprobs: float) -> Scored:
    return Scored("prompt", "answer", tuple(range(len(logprobs))), logprobs, tuple(range(len(logprobs))))


def test_success_uses_the_whole_suffix_probability():
    # Two tokens at p=0.5 each: mean-token p is 0.5 but the suffix's probability is 0.25.
    half = math.log(0.5)
    assert bench.success_rate([_scored(half, half)], [0.2]) == 1.0
    assert bench.success_rate([_scored(half, half)], [0.3]) == 0.0
    # company threshold 0.05: NLL 2.99 passes, 3.0 (p=0.0498) does not
    assert bench.success_rate([_scored(-2.99), _scored(-3.0)], [0.05, 0.05]) == 0.5


def test_threshold_reached_exactly_counts_as_success():
    assert bench.success_rate([_scored(math.log(0.25))], [0.25]) == 1.0


def test_loss_rise_is_relative():
    assert bench.loss_rise(3.003, 3.0) == pytest.approx(0.001)
    assert bench.loss_rise(2.9, 3.0) < 0


def test_eval_cases_round_robin_over_examples():
    from editspec.lang.resolve import analyse

    text = '''
canonical "a" {
  example "The capital of A is" -> " X"
  check p >= 1/5 { "doc a1" -> " X"  "doc a2" -> " X"  "doc a3" -> " X" }
}
canonical "b" {
  example "The capital of B is" -> " Y"
  check p >= 1/20 { "doc b1" -> " Y" }
}
'''
    spec = analyse("t.edit", text=text).spec
    assert spec is not None
    cases = bench.eval_cases(spec, None)
    assert [c[0] for c in cases] == ["doc a1", "doc b1", "doc a2", "doc a3"]
    assert cases[1][2] == pytest.approx(0.05)
    assert [c[0] for c in bench.eval_cases(spec, 2)] == ["doc a1", "doc b1"]


def test_sweeps_form_a_grid_per_variant():
    sweeps = bench.parse_sweeps(["sense:lr=0.01,0.03", "sense:senses=4,8", "ft-lora:lr=1e-3"])
    assert sweeps["sense"] == [{"lr": "0.01", "senses": "4"}, {"lr": "0.01", "senses": "8"},
                               {"lr": "0.03", "senses": "4"}, {"lr": "0.03", "senses": "8"}]
    assert sweeps["ft-lora"] == [{"lr": "1e-3"}]


def test_selected_setting_is_the_best_that_held_the_budget():
    rows = {"sense lr=0.01": {"success": 0.2, "held": True},
            "sense lr=0.03": {"success": 0.5, "held": False},   # better, but over the budget
            "sense lr=0.1": {"success": 0.1, "held": True},
            "ft-lora": {"success": 0.0, "held": False}}
    bench.mark_selected(rows)
    assert [name for name, row in rows.items() if row["selected"]] == ["sense lr=0.01"]
