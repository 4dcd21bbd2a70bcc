"""ROME, MEMIT and AlphaEdit on CounterFact with the ROME paper's metrics (issue 3's figures).

ES: the new object beats the true one on the rewrite prompt; PS: on the paraphrase prompts;
NS: the true object still beats the new one on the neighbourhood prompts.  Objects are scored
by summed log-probability of ``" " + object`` after the prompt.  ROME edits one record at a
time (each edit evaluated alone, then reverted); MEMIT edits a batch at once; the sequential
run applies batches one after another and scores every record after the last one.

    python benchmarks/bench_rome_memit.py rome --records 200
    python benchmarks/bench_rome_memit.py memit --records 100
    python benchmarks/bench_rome_memit.py sequential --records 1000 --batch 100

Statistics are computed once per layer and cached (`editspec stats list`); the time to
compute them is reported separately and is not part of the edit times.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import torch

from editspec.backends.alphaedit import AlphaEditConfig, alphaedit_deltas
from editspec.backends.memit import MemitConfig, memit_deltas
from editspec.backends.rome import RomeConfig, rome_deltas
from editspec.deltas import apply_deltas
from editspec.locate import EditRequest
from editspec.locate.backend import sampled_templates
from editspec.models import load_model
from editspec.stats import second_moments
from editspec.verify.protocols import score_targets

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "counterfact" / "counterfact_500.json"


def load_records(count: int, path: Path = DATA) -> list[dict]:
    records = json.loads(path.read_text())
    if count > len(records):
        raise SystemExit(f"{path} has {len(records)} records; ask for at most that many")
    return records[:count]


def request(record: dict) -> EditRequest:
    rewrite = record["requested_rewrite"]
    return EditRequest(rewrite["prompt"], rewrite["subject"], rewrite["target_new"]["str"], rewrite["target_true"]["str"])


def metrics(model, tokenizer, records: list[dict]) -> dict[str, float]:
    """Mean ES, PS and NS over `records` (per record: the fraction of its prompts that pass)."""
    pairs, layout = [], []
    for record in records:
        rewrite = record["requested_rewrite"]
        new, true = rewrite["target_new"]["str"], rewrite["target_true"]["str"]
        prompts = {"ES": [rewrite["prompt"].format(rewrite["subject"])], "PS": record["paraphrase_prompts"],
                   "NS": record["neighborhood_prompts"]}
        layout.append((new, true, prompts))
        pairs += [(p, t) for group in prompts.values() for p in group for t in (new, true)]
    scored = {(s.prompt, s.target): s.sum_logprob for s in score_targets(model, tokenizer, pairs)}
    totals = {"ES": [], "PS": [], "NS": []}
    for new, true, prompts in layout:
        for name, group in prompts.items():
            wins = [scored[(p, new)] > scored[(p, true)] for p in group]
            if name == "NS":
                wins = [not w for w in wins]
            totals[name].append(sum(wins) / len(wins))
    return {name: round(sum(v) / len(v), 3) for name, v in totals.items()}


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def run_rome(loaded, records, args):
    config = RomeConfig()
    stats = _stats(loaded, [config.layer], args)
    templates = sampled_templates(loaded, config.context_template_counts, config.template_seed)
    model, tok = loaded.model, loaded.tokenizer
    times, per_record = [], []
    for record in records:
        started = time.perf_counter()
        result = rome_deltas(model, tok, [request(record)], config, stats=stats, templates=templates)
        times.append(time.perf_counter() - started)
        with apply_deltas(model, result.deltas):
            per_record.append(metrics(model, tok, [record]))
    scores = {k: round(sum(r[k] for r in per_record) / len(per_record), 3) for k in ("ES", "PS", "NS")}
    return {"median_s": round(statistics.median(times), 2), "min_s": round(min(times), 2),
            "max_s": round(max(times), 2), **scores}


def run_memit(loaded, records, args):
    config = MemitConfig(**_overrides(args))
    stats = _stats(loaded, config.layers, args)
    templates = sampled_templates(loaded, config.context_template_counts, config.template_seed)
    before = peak_rss_gb()
    started = time.perf_counter()
    result = memit_deltas(loaded.model, loaded.tokenizer, [request(r) for r in records], config,
                          stats=stats, templates=templates)
    seconds = time.perf_counter() - started
    with apply_deltas(loaded.model, result.deltas):
        scores = metrics(loaded.model, loaded.tokenizer, records)
    return {"edits": len(records), "seconds": round(seconds, 1), "peak_rss_gb_before": round(before, 2),
            "peak_rss_gb": round(peak_rss_gb(), 2), **scores}


def run_sequential(loaded, records, args):
    rows = {}
    for method in ("memit", "alphaedit"):
        config = (MemitConfig if method == "memit" else AlphaEditConfig)(**_overrides(args))
        stats = _stats(loaded, config.layers, args)
        templates = sampled_templates(loaded, config.context_template_counts, config.template_seed)
        handles, state, started = [], None, time.perf_counter()
        try:
            for start in range(0, len(records), args.batch):
                batch = [request(r) for r in records[start:start + args.batch]]
                if method == "memit":
                    result = memit_deltas(loaded.model, loaded.tokenizer, batch, config, stats=stats, templates=templates)
                else:
                    result, state = alphaedit_deltas(loaded.model, loaded.tokenizer, batch, config, stats=stats,
                                                     state=state, templates=templates)
                handles.append(apply_deltas(loaded.model, result.deltas))
                print(f"  {method}: {start + len(batch)} edits, {time.perf_counter() - started:.0f} s", flush=True)
            seconds = time.perf_counter() - started
            rows[method] = {"edits": len(records), "batch": args.batch, "seconds": round(seconds, 1),
                            **metrics(loaded.model, loaded.tokenizer, records)}
        finally:
            for handle in reversed(handles):
                handle.revert()
    return rows


def _stats(loaded, layers, args):
    started = time.perf_counter()
    stats = second_moments(loaded, layers=list(layers), samples=args.stats_samples)
    print(f"statistics for layers {list(layers)} ({args.stats_samples} docs): {time.perf_counter() - started:.1f} s "
          "(cached after the first run)", flush=True)
    return stats


def _overrides(args) -> dict:
    return json.loads(args.config) if args.config else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", choices=["rome", "memit", "sequential", "unedited"])
    parser.add_argument("--records", type=int, default=200)
    parser.add_argument("--batch", type=int, default=100, help="Edits per batch in the sequential run.")
    parser.add_argument("--stats-samples", type=int, default=2000)
    parser.add_argument("--config", help='JSON settings for MEMIT/AlphaEdit, e.g. \'{"mom2_update_weight": 1000}\'')
    args = parser.parse_args()
    torch.manual_seed(0)
    loaded = load_model()
    records = load_records(args.records)
    print(f"SmolLM2-135M, {len(records)} CounterFact records, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads", flush=True)
    if args.run == "unedited":
        result = metrics(loaded.model, loaded.tokenizer, records)
    else:
        result = {"rome": run_rome, "memit": run_memit, "sequential": run_sequential}[args.run](loaded, records, args)
    print(json.dumps({args.run: result}, indent=2))


if __name__ == "__main__":
    main()
