"""Real-model sanity check for ROME and MEMIT on the default model (SmolLM2-135M).

Edits a few CounterFact records and prints, per record, whether the new object beats the true
one (summed log-probabilities, leading space) on the prompt, a paraphrase and a neighbour
prompt, before and after; plus wall times and peak memory.

    python benchmarks/sanity_rome_memit.py --facts 10 --stats-samples 300
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

from editspec.backends.memit import MemitConfig, memit_deltas
from editspec.backends.rome import RomeConfig, rome_deltas
from editspec.model.deltas import apply_deltas
from editspec.families.locate import EditRequest
from editspec.model.loading import load_model
from editspec.model.stats import second_moments
from editspec.model.tokens import context_templates, target_token_ids

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "counterfact" / "counterfact_500.json"


@torch.inference_mode()
def logprob(model, tok, prompt: str, target: str) -> float:
    """Summed log-probability of `target` (with a leading space) after `prompt`."""
    ids = tok(prompt)["input_ids"]
    tgt = target_token_ids(tok, prompt, target)
    logits = model(torch.tensor([ids + tgt])).logits[0].float().log_softmax(-1)
    return float(sum(logits[len(ids) - 1 + j, t] for j, t in enumerate(tgt)))


def scores(model, tok, records):
    """Fractions of records where the new object beats the true one: prompt, paraphrase, neighbour."""
    es = ps = ns = 0
    for r in records:
        rw = r["requested_rewrite"]
        new, true = rw["target_new"]["str"], rw["target_true"]["str"]
        prompt = rw["prompt"].format(rw["subject"])
        es += logprob(model, tok, prompt, new) > logprob(model, tok, prompt, true)
        para = r["paraphrase_prompts"][0]
        ps += logprob(model, tok, para, new) > logprob(model, tok, para, true)
        neigh = r["neighborhood_prompts"][0]
        ns += logprob(model, tok, neigh, true) > logprob(model, tok, neigh, new)
    n = len(records)
    return round(es / n, 3), round(ps / n, 3), round(ns / n, 3)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--facts", type=int, default=10)
    parser.add_argument("--stats-samples", type=int, default=300)
    parser.add_argument("--rome-edits", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    loaded = load_model()
    model, tok = loaded.model.eval(), loaded.tokenizer
    records = json.loads(DATA.read_text())[: args.facts]
    requests = [EditRequest(r["requested_rewrite"]["prompt"], r["requested_rewrite"]["subject"],
                            r["requested_rewrite"]["target_new"]["str"], r["requested_rewrite"]["target_true"]["str"])
                for r in records]
    t0 = time.perf_counter()
    stats = second_moments(loaded, layers=range(4, 9), samples=args.stats_samples)
    print(f"statistics (layers 4-8, {args.stats_samples} docs): {time.perf_counter() - t0:.1f}s")
    t0 = time.perf_counter()
    rome_groups = context_templates(model, tok, RomeConfig().context_template_counts)
    memit_groups = context_templates(model, tok, MemitConfig().context_template_counts)
    print(f"context templates: {time.perf_counter() - t0:.1f}s")
    print("unedited ES/PS/NS:", scores(model, tok, records))

    times, rome_scores = [], []
    for r, req in list(zip(records, requests))[: args.rome_edits]:
        t0 = time.perf_counter()
        result = rome_deltas(model, tok, [req], stats=stats, templates=rome_groups)
        times.append(time.perf_counter() - t0)
        with apply_deltas(model, result.deltas):
            rome_scores.append(scores(model, tok, [r]))
        f = result.facts[0]
        print(f"ROME {req.subject!r} -> {req.target_new!r}: {times[-1]:.1f}s, steps {f['steps']}, "
              f"nll {f['nll']:.3f}, uᵀk {f['denominator']:.3g}, ES/PS/NS {rome_scores[-1]}")
    print(f"ROME median time per edit: {sorted(times)[len(times) // 2]:.1f}s")

    t0 = time.perf_counter()
    result = memit_deltas(model, tok, requests, stats=stats, templates=memit_groups)
    took = time.perf_counter() - t0
    with apply_deltas(model, result.deltas):
        print(f"MEMIT {len(requests)} edits: {took:.1f}s, ES/PS/NS {scores(model, tok, records)}, "
              f"steps {[f['steps'] for f in result.facts]}")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
