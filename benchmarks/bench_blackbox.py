"""Black-box plugin figures: scope decisions, per-request overhead, end-to-end through the proxy.

    python benchmarks/bench_blackbox.py scope      # CounterFact paraphrases vs neighbourhood prompts
    python benchmarks/bench_blackbox.py overhead   # router + retrieval time per request, 10,000 edits
    python benchmarks/bench_blackbox.py e2e        # serve-model + proxy, generate protocol, 100 edits

Edits are written as a spec author would: the relation's prompt and up to two paraphrase
templates (the distinct CounterFact templates of that relation), and two keep constraints
(CounterFact's attribute prompts: other subjects).  The scored prompts (paraphrase and
neighbourhood prompts) are never in the memory or in the calibration.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "counterfact"


def counterfact_records(cases: list[dict]) -> list[dict]:
    """Plugin memory records for CounterFact cases (full format), as `edit_record` writes them."""
    from editspec.families.plugin.memory import one_line

    templates: dict[str, list[str]] = defaultdict(list)
    for case in cases:
        rewrite = case["requested_rewrite"]
        if rewrite["prompt"] not in templates[rewrite["relation_id"]]:
            templates[rewrite["relation_id"]].append(rewrite["prompt"])
    records = []
    for case in cases:
        rewrite = case["requested_rewrite"]
        subject, target = rewrite["subject"], rewrite["target_new"]["str"]
        others = [t for t in templates[rewrite["relation_id"]] if t != rewrite["prompt"]][:2]
        prompt = one_line(rewrite["prompt"].format(subject))
        records.append({
            "id": f"cf-{case['case_id']}", "subject": subject, "relation": rewrite["relation_id"],
            "target": target, "aliases": [], "old": rewrite["target_true"]["str"], "prompt": prompt,
            "fact": one_line(f"{prompt} {target}"), "updates": [one_line(t.format(subject)) for t in others],
            "questions": [], "keep": [{"prompt": one_line(p), "answer": target} for p in case["attribute_prompts"][:2]],
        })
    return records


def train_records(limit: int) -> list[dict]:
    """Records from the flattened CounterFact training set (10,000 edits)."""
    from editspec.families.plugin.memory import one_line

    cases = json.loads((DATA / "counterfact-train.json").read_text())[:limit]
    return [{"id": f"cft-{c['case_id']}", "subject": c["subject"], "relation": "", "target": c["target_new"],
             "aliases": [], "old": c["ground_truth"], "prompt": one_line(c["prompt"]),
             "fact": one_line(f"{c['prompt']} {c['target_new']}"), "updates": [one_line(c["rephrase_prompt"])],
             "questions": [], "keep": [{"prompt": one_line(c["locality_prompt"]), "answer": c["locality_ground_truth"]}]}
            for c in cases]


def build(records: list[dict], kind: str, folder: Path, **overrides):
    from editspec.families.plugin.plugin import open_plugin, write_plugin
    from editspec.families.plugin.prompts import IKE_TEMPLATE, LTE_TEMPLATE
    from editspec.model.embed import load_embedder

    from editspec.backends.ike.config import IkeConfig

    defaults = IkeConfig()   # the shipped defaults (retrieval's are the same, less demonstrations)
    settings = dict(threshold=defaults.threshold, default_threshold=defaults.default_threshold,
                    mention_bonus=defaults.mention_bonus, top_k=defaults.top_k,
                    demonstrations=defaults.demonstrations if kind == "ike" else 0, seed=0)
    settings.update(overrides)
    started = time.perf_counter()
    router = write_plugin(folder, kind=kind, records=records, template=IKE_TEMPLATE if kind == "ike" else LTE_TEMPLATE,
                          embedder=load_embedder(), **settings)
    print(f"built a {kind} plugin of {len(records)} edits in {time.perf_counter() - started:.1f} s; "
          f"τ = {router['threshold']:.3f} ({router['threshold_source']}, calibration {router['calibration']})")
    return open_plugin(folder)


def scope(args) -> None:
    from editspec.families.plugin.router import query_vectors

    cases = json.loads((DATA / "counterfact_500.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        plugin = build(counterfact_records(cases), "retrieval", Path(tmp))
    texts = [p for case in cases for p in (*case["paraphrase_prompts"], *case["neighborhood_prompts"])]
    vectors = dict(zip(texts, query_vectors(plugin.embedder, texts, fast=True)))   # batched, as requests embed
    hits = wrong = missed = false_positive = negatives = 0
    named = named_routed = 0
    for index, case in enumerate(cases):
        for prompt in case["paraphrase_prompts"]:
            matches, _ = plugin.route(prompt, vectors[prompt])
            if any(m.record == index for m in matches):
                hits += 1
            else:
                missed += 1
                wrong += bool(matches)
        for prompt in case["neighborhood_prompts"]:
            routed = bool(plugin.route(prompt, vectors[prompt])[0])
            if plugin.router.subjects.mentioned(prompt):
                # It names the subject of another edit in memory: in that edit's scope, not a
                # plain neighbour.  Counted apart so the figure says what it measures.
                named, named_routed = named + 1, named_routed + routed
                continue
            negatives += 1
            false_positive += routed
    precision = hits / max(hits + false_positive + wrong, 1)
    recall = hits / (hits + missed)
    print(f"scope on CounterFact ({len(cases)} edits in memory): {hits + missed} paraphrase prompts, "
          f"{negatives} neighbourhood prompts")
    print(f"  precision {precision:.4f}  recall {recall:.4f}  false-positive rate {false_positive / negatives:.4f}  "
          f"(routed to the wrong edit: {wrong})")
    every = hits / max(hits + false_positive + wrong + named_routed, 1)
    print(f"  {named} more neighbourhood prompts name another edited subject; {named_routed} of them were routed "
          f"(precision counting them as errors: {every:.4f})")


def overhead(args) -> None:
    import random

    from editspec.families.plugin.plugin import open_plugin

    records = train_records(args.edits)
    if args.plugin_dir and (Path(args.plugin_dir) / "router.json").is_file():
        plugin = open_plugin(Path(args.plugin_dir))   # built by an earlier run: only the timing is redone
    else:
        with tempfile.TemporaryDirectory() as tmp:
            plugin = build(records, "retrieval", Path(args.plugin_dir or tmp))
    cases = json.loads((DATA / "counterfact-train.json").read_text())[:args.edits]
    rng = random.Random(0)
    queries = [rng.choice([c["rephrase_prompt"], c["locality_prompt"]]) for c in rng.sample(cases, args.queries)]
    for query in queries[:5]:
        plugin.rewrite_completion({"prompt": query})   # warm up
    total, embed = [], []
    routed = 0
    for query in queries:
        mark = time.perf_counter()
        plugin.embedder.encode_query([query])
        embed.append(time.perf_counter() - mark)
        mark = time.perf_counter()
        routed += plugin.rewrite_completion({"model": "m", "prompt": query}) is not None
        total.append(time.perf_counter() - mark)
    ms = lambda values, q: 1000 * statistics.quantiles(values, n=100)[q - 1]  # noqa: E731
    print(f"overhead per request with {len(records)} edits ({len(plugin.memory.keys)} keys), {len(queries)} "
          f"queries ({routed} routed):")
    print(f"  total p50 {ms(total, 50):.2f} ms  p95 {ms(total, 95):.2f} ms  "
          f"(embedding the query alone: p50 {ms(embed, 50):.2f} ms)")


def e2e(args) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    import openai

    from blackbox_helpers import serving
    from editspec.serve.model_server import create_model_app
    from editspec.serve.proxy import create_proxy_app
    from editspec.model.loading import load_model
    from editspec.verify.protocols import generate

    cases = json.loads((DATA / "counterfact_500.json").read_text())[:args.edits]
    loaded = load_model()

    def answer(client, prompt):
        return client.completions.create(model="m", prompt=prompt, max_tokens=args.tokens, temperature=0).choices[0].text

    with serving(create_model_app(loaded)) as upstream:
        direct = openai.OpenAI(base_url=upstream, api_key="local", timeout=600)
        for kind in args.kinds.split(","):
            with tempfile.TemporaryDirectory() as tmp:
                plugin = build(counterfact_records(cases), kind, Path(tmp))
            started = time.perf_counter()
            scores = defaultdict(list)
            with serving(create_proxy_app(plugin, upstream)) as proxy:
                client = openai.OpenAI(base_url=proxy, api_key="local", timeout=600)
                for case in cases:
                    rewrite = case["requested_rewrite"]
                    new, old = rewrite["target_new"]["str"], rewrite["target_true"]["str"]
                    scores["efficacy"].append(generate(answer(client, rewrite["prompt"].format(rewrite["subject"])),
                                                       [new]).passed)
                    for prompt in case["paraphrase_prompts"]:
                        scores["generalization"].append(generate(answer(client, prompt), [new]).passed)
                    for prompt in case["neighborhood_prompts"][:args.neighbours]:
                        edited, base = answer(client, prompt), answer(direct, prompt)
                        scores["locality (unchanged)"].append(edited == base)
                        scores["locality (no new object)"].append(not generate(edited, [new]).passed)
            figures = "  ".join(f"{name} {sum(v) / len(v):.3f}" for name, v in scores.items())
            print(f"{kind} on {len(cases)} CounterFact edits, generate protocol, {args.tokens} tokens: {figures} "
                  f"({time.perf_counter() - started:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("scope")
    cost = commands.add_parser("overhead")
    cost.add_argument("--edits", type=int, default=10_000)
    cost.add_argument("--queries", type=int, default=300)
    cost.add_argument("--plugin-dir", help="Keep the built plugin here, and reuse it when it is already there.")
    end = commands.add_parser("e2e")
    end.add_argument("--edits", type=int, default=100)
    end.add_argument("--kinds", default="retrieval,ike")
    end.add_argument("--tokens", type=int, default=8)
    end.add_argument("--neighbours", type=int, default=2, help="Neighbourhood prompts scored per edit.")
    args = parser.parse_args()
    {"scope": scope, "overhead": overhead, "e2e": e2e}[args.command](args)


if __name__ == "__main__":
    main()
