"""Canonical examples (Hewitt et al. 2024): success rate while general text loss rises <= 0.1%.

    nice -n 19 python benchmarks/bench_canonical.py --limit 10 --eval-limit 40

Tasks: country-capital and company-CEO of ../shared/data/canonical-examples (validation
split by default, `--split test` for the held-out one).  The first `--limit` training rows of
a task are imported with `editspec import canonical` (each row a canonical block, its
evaluation documents as `check p >= T`, hard negatives as `keep`) and compiled with each
variant: `ft-lora` (ft, LoRA: the default), `ft-full` (ft `method=full`) and `sense` (on
SmolLM2, the transformer form: the top-k MLP value vectors per example).

Success (the paper's `example` normalisation, docs/measurement.md#canonical-example-success): an evaluation document
succeeds when the probability of its whole suffix (exp of the *summed* token log-probs,
teacher-forced after the document's prefix) is at least the task's threshold: 0.2 for
country-capital, 0.05 for company-CEO.  The evaluation documents are the imported checks of
the trained entities (round-robin over entities, at most `--eval-limit`); the verifier's own
`logprob` protocol judges them.

General loss: mean per-token NLL on the first 100 documents of val100.jsonl (= val100-short;
`--val100 full`: all 4,007), edited against unedited; the figure is the relative rise in
percent and "held" says whether it is at most 0.1%.

The spec carries `preserve { budget loss_increase <= 0.1% }` on `--guard-docs` documents
taken from the *end* of val100.jsonl (disjoint from the measured ones), so the trainer's own
budget check stops and rolls back to the last parameters within the budget, checked every
`--budget-every` steps (default 2; the backends' own default, 10, rolls the default learning
rates back to no edit at all).  The training backends keep half of the preserve documents
out of their KL anchors and watch the budget on those (`budget_holdout`), so the guard
estimates the rise on text the trainer was not pulled towards.  `--guard-docs 0` compiles
without it.  `--set VARIANT:key=value` overrides settings.

The paper picks, per method, the best hyperparameters that keep the budget on a validation
set.  `--sweep VARIANT:key=v1,v2,...` (repeatable) compiles a variant once per value (the
grid of all its sweeps); the report marks, per task and variant, the setting with the best
success among those that held the budget on the measured val100 documents (`*`).  Select on
`--split val`, then report the chosen setting with `--split test`.

    python benchmarks/bench_canonical.py --limit 10 --eval-limit 40 \
        --sweep ft-lora:lr=3e-4,1e-3,3e-3 --sweep ft-full:lr=1e-5,3e-5,1e-4 --sweep sense:lr=3e-3,1e-2,3e-2

Reports per task x variant (x setting): success unedited, success edited, loss rise %, budget
held, compile seconds, why training stopped and the steps whose parameters were kept; as a
table or JSON (--json).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "canonical-examples"
BUDGET = 0.001  # the paper's loosest league: general loss up by at most 0.1% (relative)

# task -> (training file of a split, success threshold as the spec writes it)
TASKS = {
    "country_capital": ("country_capital/split/country_capital_fixed-{split}.jsonl", "1/5"),
    "company_ceo": ("company_ceo/split/company_ceo_train-{split}.jsonl", "1/20"),
}
# variant -> (backend, settings)
VARIANTS = {"ft-lora": ("ft", {}), "ft-full": ("ft", {"method": "full"}), "sense": ("sense", {})}


def val100_texts(which: str) -> list[str]:
    """The general-text documents of val100.jsonl: the first 100 (`short`) or all (`full`)."""
    rows = [json.loads(line)["text"] for line in (DATA / "val100.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()]
    return rows[:100] if which == "short" else rows


def build_spec(task: str, split: str, limit: int, folder: Path, guard: list[str]):
    """The importer's spec for the first `limit` rows of `task`, plus the preserve guard (if any)."""
    from editspec.importers import import_file
    from editspec.lang.resolve import load_spec

    pattern, threshold = TASKS[task]
    text = import_file("canonical", DATA / pattern.format(split=split), limit=limit, threshold=threshold).text
    if guard:
        (folder / "guard.txt").write_text("\n".join(" ".join(t.split()) for t in guard) + "\n", encoding="utf-8")
        text += f'\npreserve {{\n  file "guard.txt"\n  budget loss_increase <= {BUDGET * 100:g}%\n}}\n'
    path = folder / f"{task}.edit"
    path.write_text(text, encoding="utf-8")
    return load_spec(path)


def eval_cases(spec, limit: int | None) -> list[tuple[str, str, float]]:
    """(prefix, suffix, threshold) of the spec's checks, round-robin over its examples, at most `limit`."""
    per_example = [[(prompt, check.fact.answer, check.threshold) for check in example.checks
                    for prompt in check.fact.prompts] for example in spec.canonical]
    cases = []
    for depth in range(max(map(len, per_example), default=0)):
        cases += [rows[depth] for rows in per_example if depth < len(rows)]
    return cases[:limit] if limit is not None else cases


def success_rate(scored, thresholds) -> float:
    """Share of cases whose whole-suffix probability reaches its threshold (the verifier's `logprob`).

    >>> from editspec.verify.protocols import Scored
    >>> success_rate([Scored("p", "a", (1,), (-1.0,), (1,))], [0.2])   # exp(-1) = 0.37
    1.0
    """
    from editspec.verify.protocols import logprob

    results = [logprob([s], ">=", t).passed for s, t in zip(scored, thresholds)]
    return round(sum(results) / len(results), 4) if results else float("nan")


def score_success(model, tokenizer, cases) -> float:
    """`success_rate` of `model` on `cases` from `eval_cases`."""
    from editspec.verify.protocols import score_targets

    scored = score_targets(model, tokenizer, [(prompt, answer) for prompt, answer, _ in cases], batch_size=8)
    return success_rate(scored, [t for _, _, t in cases])


def mean_loss(model, tokenizer, texts: list[str], chunk: int = 8) -> float:
    """Mean per-token NLL of `texts` (the verifier's `text_loss`, a few documents at a time)."""
    from editspec.verify.observe import text_loss

    nll = tokens = 0.0
    for start in range(0, len(texts), chunk):
        seen = text_loss(model, tokenizer, texts[start:start + chunk])
        nll += seen["loss"] * seen["tokens"]
        tokens += seen["tokens"]
    return nll / tokens


def loss_rise(edited: float, unedited: float) -> float:
    """Relative rise of the general loss: 0.001 is the paper's 0.1% budget."""
    return (edited - unedited) / unedited


def run_variant(variant: str, spec, cases, texts, base_loss: float, loaded, overrides: dict, out: Path, say) -> dict:
    """Compile `spec` with one variant; success and general-loss rise with the artifact attached."""
    from editspec.build.compiler import compile_spec
    from editspec.build.attach import load_edited

    backend, settings = VARIANTS[variant]
    started = time.perf_counter()
    artifact = compile_spec(spec, backend, model=loaded, out=out, overrides={**settings, **overrides},
                            progress=lambda m: say(f"  {variant}: {m}"))
    seconds = time.perf_counter() - started
    training = artifact.manifest.details.get("training", {})
    steps = training.get("steps")
    if training.get("stopped") == "budget" and steps is not None:  # rolled back to the last check within it
        steps -= artifact.config["budget_every"]
    with load_edited(loaded, artifact) as edited:
        success = score_success(edited.model, loaded.tokenizer, cases)
        rise = loss_rise(mean_loss(edited.model, loaded.tokenizer, texts), base_loss)
    return {"success": success, "loss_rise_pct": round(100 * rise, 4), "held": rise <= BUDGET,
            "compile_s": round(seconds, 1), "steps_kept": steps, "stopped": training.get("stopped")}


def parse_sweeps(items: list[str]) -> dict[str, list[dict[str, str]]]:
    """`VARIANT:key=v1,v2` options into, per variant, the grid of settings to compile.

    >>> parse_sweeps(["sense:lr=0.01,0.03", "sense:senses=4,8"])["sense"][1]
    {'lr': '0.01', 'senses': '8'}
    """
    import itertools

    from bench_lifelong import parse_sets

    axes: dict[str, dict[str, list[str]]] = {}
    for item in items:
        for variant, pair in parse_sets([item]).items():
            for key, values in pair.items():
                axes.setdefault(variant, {})[key] = [v for v in values.split(",") if v]
    return {variant: [dict(zip(keys, combo)) for combo in itertools.product(*keyed.values())]
            for variant, keyed in axes.items() for keys in [list(keyed)]}


def mark_selected(variants: dict[str, dict]) -> None:
    """Per variant (the part of a row name before a space), flag the best row that held the budget."""
    best: dict[str, str] = {}
    for name, row in variants.items():
        base = name.split(" ")[0]
        if row["held"] and (base not in best or row["success"] > variants[best[base]]["success"]):
            best[base] = name
    for name, row in variants.items():
        row["selected"] = best.get(name.split(" ")[0]) == name


def main(argv=None) -> int:
    from bench_lifelong import parse_sets  # same `--set NAME:key=value` syntax

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--split", choices=("val", "test"), default="val")
    parser.add_argument("--limit", type=int, default=10, help="training rows (canonical examples) per task")
    parser.add_argument("--eval-limit", type=int, default=None, help="most evaluation documents per task")
    parser.add_argument("--val100", choices=("short", "full"), default="short",
                        help="general text measured: the first 100 documents of val100.jsonl, or all")
    parser.add_argument("--guard-docs", type=int, default=8,
                        help="val100.jsonl documents (from its end) in the spec's preserve budget; 0: none")
    parser.add_argument("--budget-every", default="2", help="steps between the trainer's budget checks")
    parser.add_argument("--model", default=None, help="model name or path (default: the embedded default)")
    parser.add_argument("--set", action="append", default=[], metavar="VARIANT:KEY=VALUE")
    parser.add_argument("--sweep", action="append", default=[], metavar="VARIANT:KEY=V1,V2,...",
                        help="compile the variant once per value (with several: the grid)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    import torch

    from editspec.model.loading import load_model

    torch.set_num_threads(args.threads)
    say = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    sets = parse_sets(args.set)
    sweeps = parse_sweeps(args.sweep)
    loaded = load_model(args.model)
    texts = val100_texts(args.val100)
    guard = val100_texts("full")[-args.guard_docs:] if args.guard_docs > 0 else []
    base_loss = mean_loss(loaded.model, loaded.tokenizer, texts)
    say(f"unedited general loss {base_loss:.4f} on {len(texts)} documents")
    results: dict = {"unedited_loss": round(base_loss, 6), "tasks": {}}
    with tempfile.TemporaryDirectory(prefix="editspec-canonical-") as tmp:
        for task in filter(None, args.tasks.split(",")):
            folder = Path(tmp) / task
            folder.mkdir()
            spec = build_spec(task, args.split, args.limit, folder, guard)
            cases = eval_cases(spec, args.eval_limit)
            row = {"examples": len(spec.canonical), "eval_docs": len(cases),
                   "unedited": score_success(loaded.model, loaded.tokenizer, cases), "variants": {}}
            say(f"{task}: {row['examples']} examples, {row['eval_docs']} evaluation documents, "
                f"unedited success {row['unedited']}")
            for variant in filter(None, args.variants.split(",")):
                for swept in sweeps.get(variant, [{}]):
                    name = " ".join([variant] + [f"{k}={v}" for k, v in swept.items()])
                    overrides = {**({"budget_every": args.budget_every} if guard else {}),
                                 **sets.get(variant, {}), **swept}
                    row["variants"][name] = run_variant(variant, spec, cases, texts, base_loss, loaded,
                                                        overrides, folder / name.replace(" ", "_"), say)
                    say(f"{task} {name}: {row['variants'][name]}")
            mark_selected(row["variants"])
            results["tasks"][task] = row
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    width = max([len(v) for row in results["tasks"].values() for v in row["variants"]] + [8]) + 1
    print(f"{'task':<16} {'variant':<{width}} {'ex':>3} {'docs':>4} {'unedited':>8} {'edited':>7} {'loss +%':>8} "
          f"{'held':>5} {'compile s':>9} stopped")
    for task, row in results["tasks"].items():
        for variant, r in row["variants"].items():
            name = variant + ("*" if r["selected"] else "")
            print(f"{task:<16} {name:<{width}} {row['examples']:>3} {row['eval_docs']:>4} {row['unedited']:>8} "
                  f"{r['success']:>7} {r['loss_rise_pct']:>8} {str(r['held']):>5} {r['compile_s']:>9} "
                  f"{r['stopped']} ({r['steps_kept']} steps kept)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
