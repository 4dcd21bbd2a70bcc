"""Lifelong editing: N sequential edits (`compile --on` after each one), then score all of them.

    python benchmarks/bench_lifelong.py --backends melo,grace,ft,alphaedit --limit 200
    python benchmarks/bench_lifelong.py --backends grace --limit 5 --set grace:n_iter=20

The edits are the first N records of ../shared/data/counterfact/counterfact-train.json,
imported as `editspec import counterfact` writes them (prompt -> edit, rephrase -> scope,
locality prompt -> keep).  Edit k is compiled on top of the artifact of edits 1..k-1.
After the last edit, on the default model, each edit is scored teacher-forced by summed
log-probability (CounterFact's compare protocol):

- efficacy: P(new) > P(old) after the edit prompt;
- generalization: the same after the rephrased prompt (never trained on: `scope` stays off);
- locality: after the locality prompt, the old answer still beats the new object.

Reports the three rates and the mean compile time per edit, as a table and JSON (--json), with
the unedited model's rates as the first row (locality is measured against that, not against 1).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "counterfact" / "counterfact-train.json"


def import_spec(limit: int, folder: Path):
    """The first `limit` CounterFact records as a spec (the importer's own output)."""
    from click.testing import CliRunner

    from editspec.cli import main
    from editspec.lang.resolve import load_spec

    path = folder / "counterfact.edit"
    result = CliRunner().invoke(main, ["import", "counterfact", str(DATA), "-o", str(path), "--limit", str(limit)])
    if result.exit_code != 0:
        raise SystemExit(result.output)
    return load_spec(path)


def run_backend(backend: str, spec, loaded, overrides: dict, folder: Path, say) -> dict:
    """Compile the edits one by one on top of each other; score every edit after the last."""
    from editspec.build.compiler import compile_spec
    from editspec.build.attach import load_edited

    times, previous = [], None
    for k in range(1, len(spec.edits) + 1):
        partial = spec.model_copy(update={"edits": spec.edits[:k]})
        out = folder / f"{backend}-{k}"
        started = time.perf_counter()
        artifact = compile_spec(partial, backend, model=loaded, out=out, overrides=overrides, on=previous)
        times.append(time.perf_counter() - started)
        if previous is not None:
            shutil.rmtree(previous)
        previous = artifact.path
        say(f"{backend}: edit {k}/{len(spec.edits)} in {times[-1]:.1f} s")
    with load_edited(loaded, previous) as edited:
        scores = score(edited.model, loaded.tokenizer, spec.edits)
    shutil.rmtree(previous)
    return {**scores, "edits": len(spec.edits), "seconds_per_edit": round(statistics.mean(times), 3),
            "seconds_total": round(sum(times), 1)}


def score(model, tokenizer, edits) -> dict:
    """Efficacy, generalization and locality rates (compare protocol, summed log-probability)."""
    from editspec.verify.protocols import score_targets

    pairs, cases = [], []
    for edit in edits:
        rows = {"efficacy": [(edit.prompts[0], edit.target, edit.old)],
                "generalization": [(p, edit.target, edit.old) for p in edit.scope],
                "locality": [(f.prompts[0], f.answer, edit.target) for f in edit.keep]}
        for metric, triples in rows.items():
            for prompt, good, bad in triples:
                cases.append((metric, prompt, good, bad))
                pairs += [(prompt, good), (prompt, bad)]
    scored = dict(zip(pairs, score_targets(model, tokenizer, pairs)))
    hits: dict[str, list[int]] = {"efficacy": [], "generalization": [], "locality": []}
    for metric, prompt, good, bad in cases:
        hits[metric].append(int(scored[(prompt, good)].sum_logprob > scored[(prompt, bad)].sum_logprob))
    return {metric: round(sum(v) / len(v), 4) if v else None for metric, v in hits.items()}


def parse_sets(items: list[str]) -> dict[str, dict[str, str]]:
    """`backend:key=value` options into per-backend overrides."""
    found: dict[str, dict[str, str]] = {}
    for item in items:
        backend, _, pair = item.partition(":")
        key, _, value = pair.partition("=")
        if not key or not value:
            raise SystemExit(f"--set {item}: expected BACKEND:KEY=VALUE")
        found.setdefault(backend, {})[key] = value
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="melo,grace,ft,alphaedit")
    parser.add_argument("--limit", type=int, default=200, help="number of sequential edits")
    parser.add_argument("--model", default=None, help="model name or path (default: the embedded default)")
    parser.add_argument("--set", action="append", default=[], metavar="BACKEND:KEY=VALUE")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    from editspec.model.loading import load_model

    say = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    sets = parse_sets(args.set)
    loaded = load_model(args.model)
    results = {}
    with tempfile.TemporaryDirectory(prefix="editspec-lifelong-") as tmp:
        spec = import_spec(args.limit, Path(tmp))
        results["unedited"] = {**score(loaded.model, loaded.tokenizer, spec.edits), "edits": 0,
                               "seconds_per_edit": 0.0, "seconds_total": 0.0}
        for backend in filter(None, args.backends.split(",")):
            results[backend] = run_backend(backend, spec, loaded, sets.get(backend, {}), Path(tmp), say)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"{'backend':<10} {'edits':>5} {'efficacy':>9} {'general.':>9} {'locality':>9} {'s/edit':>7}")
        for backend, r in results.items():
            print(f"{backend:<10} {r['edits']:>5} {r['efficacy']:>9} {r['generalization']:>9} {r['locality']:>9} "
                  f"{r['seconds_per_edit']:>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
