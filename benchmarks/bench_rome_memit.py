"""ROME, MEMIT and AlphaEdit on CounterFact with the ROME paper's metrics (issue 3's figures).

ES: the new object beats the true one on the rewrite prompt; PS: on the paraphrase prompts;
NS: the true object still beats the new one on the neighbourhood prompts.  Objects are scored
by summed log-probability of ``" " + object`` after the prompt.  ROME edits one record at a
time (each edit evaluated alone, then reverted); MEMIT edits a batch at once; the sequential
run applies batches one after another and scores every record after the last one.

    python benchmarks/bench_rome_memit.py rome --records 200
    python benchmarks/bench_rome_memit.py memit --records 100
    python benchmarks/bench_rome_memit.py sequential --records 1000 --batch 100 --data train

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
from editspec.model.deltas import apply_deltas
from editspec.importers.factual import COUNTERFACT_QUESTIONS
from editspec.families.locate import EditRequest
from editspec.families.locate.backend import sampled_templates
from editspec.model.loading import load_model
from editspec.model.stats import second_moments
from editspec.verify.protocols import score_targets

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "counterfact" / "counterfact_500.json"
TRAIN = DATA.with_name("counterfact-train.json")


def load_records(count: int, path: Path = DATA) -> list[dict]:
    """The first `count` records of CounterFact, in the full layout (`counterfact_500.json`),
    or converted to it from the flattened training set (`counterfact-train.json`)."""
    records = json.loads(path.read_text())
    if records and "requested_rewrite" not in records[0]:
        records = [r for r in map(_from_flat, records) if r]
    if count > len(records):
        raise SystemExit(f"{path} has {len(records)} usable records; ask for at most that many")
    return records[:count]


def _from_flat(case: dict) -> dict | None:
    # One rewrite prompt (the subject written out), one paraphrase, one neighbourhood prompt whose
    # true answer may differ from the edited fact's.
    if case["subject"] not in case["prompt"]:
        return None
    return {"case_id": case["case_id"],
            "requested_rewrite": {"prompt": case["prompt"].replace(case["subject"], "{}", 1), "subject": case["subject"],
                                  "target_new": {"str": case["target_new"]}, "target_true": {"str": case["ground_truth"]}},
            "paraphrase_prompts": [case["rephrase_prompt"]], "neighborhood_prompts": [case["locality_prompt"]],
            "neighborhood_true": case["locality_ground_truth"]}


def request(record: dict) -> EditRequest:
    """The record's edit, with its relation's chat question as `editspec import counterfact` writes it."""
    rewrite = record["requested_rewrite"]
    question = COUNTERFACT_QUESTIONS.get(str(rewrite.get("relation_id")))
    return EditRequest(rewrite["prompt"], rewrite["subject"], rewrite["target_new"]["str"], rewrite["target_true"]["str"],
                       questions=(question.replace("{subject}", "{}"),) if question else ())


def metrics(model, tokenizer, records: list[dict]) -> dict[str, float]:
    """Mean ES, PS and NS over `records` (per record: the fraction of its prompts that pass)."""
    pairs, layout = [], []
    for record in records:
        rewrite = record["requested_rewrite"]
        new, true = rewrite["target_new"]["str"], rewrite["target_true"]["str"]
        prompts = {"ES": [rewrite["prompt"].format(rewrite["subject"])], "PS": record["paraphrase_prompts"],
                   "NS": record["neighborhood_prompts"]}
        kept = record.get("neighborhood_true", true)   # the neighbours' own true object
        layout.append((new, true, kept, prompts))
        pairs += [(p, t) for name, group in prompts.items() for p in group
                  for t in (new, kept if name == "NS" else true)]
    scored = {(s.prompt, s.target): s.sum_logprob for s in score_targets(model, tokenizer, pairs)}
    totals = {"ES": [], "PS": [], "NS": []}
    for new, true, kept, prompts in layout:
        for name, group in prompts.items():
            if name == "NS":
                wins = [scored[(p, kept)] > scored[(p, new)] for p in group]
            else:
                wins = [scored[(p, new)] > scored[(p, true)] for p in group]
            totals[name].append(sum(wins) / len(wins))
    return {name: round(sum(v) / len(v), 3) for name, v in totals.items()}


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def run_rome(loaded, records, args):
    config = RomeConfig(**_overrides(args))
    stats = _stats(loaded, [config.layer], args)
    templates = sampled_templates(loaded, config.context_template_counts, config.template_seed)
    model, tok = loaded.model, loaded.tokenizer
    times, per_record, misses = [], [], []
    for index, record in enumerate(records):
        started = time.perf_counter()
        result = rome_deltas(model, tok, [request(record)], config, stats=stats, templates=templates)
        times.append(time.perf_counter() - started)
        with apply_deltas(model, result.deltas):
            per_record.append(metrics(model, tok, [record]))
        if per_record[-1]["ES"] < 1:   # what the efficacy misses share: printed as they happen
            rewrite, fact = record["requested_rewrite"], result.facts[0]
            misses.append({"index": index, "case_id": record.get("case_id"), "subject": rewrite["subject"],
                           "prompt": rewrite["prompt"].format(rewrite["subject"]),
                           "new": rewrite["target_new"]["str"], "true": rewrite["target_true"]["str"],
                           "nll": round(fact["nll"], 4), "steps": fact["steps"]})
            print(f"  ES miss: {json.dumps(misses[-1])}", flush=True)
    scores = {k: round(sum(r[k] for r in per_record) / len(per_record), 3) for k in ("ES", "PS", "NS")}
    return {"median_s": round(statistics.median(times), 2), "min_s": round(min(times), 2),
            "max_s": round(max(times), 2), **scores, "es_misses": misses}


def run_memit(loaded, records, args):
    config = MemitConfig(**_overrides(args))
    stats = _stats(loaded, config.layers, args)
    templates = sampled_templates(loaded, config.context_template_counts, config.template_seed)
    before = peak_rss_gb()
    started = time.perf_counter()
    result = memit_deltas(loaded.model, loaded.tokenizer, [request(r) for r in records], config,
                          stats=stats, templates=templates)
    seconds = time.perf_counter() - started
    edit_peak = peak_rss_gb()   # the edit's own peak: scoring below batches full-vocabulary logits
    with apply_deltas(loaded.model, result.deltas):
        scores = metrics(loaded.model, loaded.tokenizer, records)
    return {"edits": len(records), "seconds": round(seconds, 1), "peak_rss_gb_before": round(before, 2),
            "peak_rss_gb": round(edit_peak, 2), "peak_rss_gb_with_scoring": round(peak_rss_gb(), 2), **scores}


def run_sequential(loaded, records, args):
    rows = {}
    for method in args.methods.split(","):
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
            print(f"  {method}: {json.dumps(rows[method])}", flush=True)   # each row as soon as it exists
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
    parser.add_argument("--methods", default="memit,alphaedit",
                        help="Methods of the sequential run (one per process runs them side by side).")
    parser.add_argument("--stats-samples", type=int, default=2000)
    parser.add_argument("--data", choices=["500", "train"], default="500",
                        help="counterfact_500.json (full layout, 500 records) or counterfact-train.json (10,000, "
                        "flattened: one paraphrase and one neighbour each); 1,000 sequential edits need `train`.")
    parser.add_argument("--only", help="Comma-separated indices (0-based) of the loaded records to run, e.g. the "
                        "`index` of the ES misses a `rome` run prints.")
    parser.add_argument("--config", help='JSON settings for the method, e.g. \'{"mom2_update_weight": 1000}\'')
    args = parser.parse_args()
    torch.manual_seed(0)
    loaded = load_model()
    records = load_records(args.records, TRAIN if args.data == "train" else DATA)
    if args.only:
        records = [records[int(i)] for i in args.only.split(",")]
    print(f"SmolLM2-135M, {len(records)} CounterFact records, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads", flush=True)
    if args.run == "unedited":
        result = metrics(loaded.model, loaded.tokenizer, records)
    else:
        result = {"rome": run_rome, "memit": run_memit, "sequential": run_sequential}[args.run](loaded, records, args)
    print(json.dumps({args.run: result}, indent=2))


if __name__ == "__main__":
    main()
