"""Lifelong editing: CounterFact edits in `compile --on` batches, scored at checkpoints.

    python benchmarks/bench_lifelong.py --backends ultraedit,wise --limit 1000 --batch 100 --checkpoints 500,1000
    python benchmarks/bench_lifelong.py --backends grace --limit 5 --batch 1 --set grace:n_iter=20

The edits are the first N records of ../shared/data/counterfact/counterfact-train.json,
imported as `editspec import counterfact` writes them (prompt -> edit, rephrase -> scope,
locality prompt -> keep).  Each batch of `--batch` edits is compiled on top of the artifact of
the batches before it.  At each checkpoint, on the default model, every edit so far is scored
teacher-forced by summed log-probability (CounterFact's compare protocol):

- efficacy: P(new) > P(old) after the edit prompt;
- generalization: the same after the rephrased prompt, held out: the specs compiled have no
  `scope` (wise calibrates its routing threshold on scope prompts and ft can train on them, so
  a scored rephrasing inside the spec would be seen; `--scope-in-spec` puts them back);
- locality: after each edit's locality prompt, the old answer still beats the new object;
- fixed NS: the same on a fixed neighbourhood set, the locality prompts of `--neighbourhood`
  records after the edited ones (never edited, the same set at every checkpoint);
- earlier: efficacy of the first batch's edits only (do the oldest edits still hold?);
- with `--score-sample N`, ES / PS / NS are scored on a fixed seeded sample of N of the edits
  so far (`scored` says how many), not on all of them, and the unedited model on each checkpoint's
  sample (for a 10,000-edit chain, where scoring every edit at three checkpoints costs as much
  as a third of the chain); the table says which;
- with `--neighbourhood-file PATH`, the fixed NS set is the keep facts of the first
  `--neighbourhood` records of another CounterFact file that share no prompt with the edits
  (when the edits use up counterfact-train.json, as 10,000 do);
- with `--generate K`, the first K edits as users meet them: greedy continuations of the edit
  prompt and its rephrasing, and the chat reply to the edit prompt, that contain the new answer,
  and keep prompts whose continuation still contains the kept answer.

After every batch: general-text perplexity (`--ppl-docs` WikiText-2 paragraphs, 128 tokens; the
cheap collapse detector), compile time (wall, and the process's CPU seconds: on a shared machine
the steadier figure) and artifact size.  After the chain, `--abba K` edits
of the first batch are edited back to their old answer in one more `--on` turn: the share that
returns to a (P(a) > P(b)).  Per method: peak resident memory of the process (run one method per
process for a clean figure), and the request overhead: time of one forward over the fixed
neighbourhood prompts, edited / unedited.  Figures on a shared machine are loaded: say so.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "counterfact" / "counterfact-train.json"


def import_spec(limit: int | None, folder: Path, source: Path = DATA):
    """The first `limit` (None: all) CounterFact records of `source` as a spec (the importer's own output)."""
    from click.testing import CliRunner

    from editspec.cli import main
    from editspec.lang.resolve import load_spec

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "counterfact.edit"
    result = CliRunner().invoke(main, ["import", "counterfact", str(source), "-o", str(path)]
                                + (["--limit", str(limit)] if limit is not None else []))
    if result.exit_code != 0:
        raise SystemExit(result.output)
    return load_spec(path)


def run_backend(backend: str, spec, loaded, overrides: dict, folder: Path, args, fixed, docs, say) -> dict:
    """Compile the edits in batches on top of each other; score at the checkpoints."""
    from editspec.build.attach import load_edited
    from editspec.build.compiler import compile_spec

    batches, checkpoints, previous = [], [], None
    wanted = set(args.checkpoints) | {len(spec.edits)}
    first = spec.edits[: args.batch]
    compiled = compiled_spec(spec, args.scope_in_spec)
    for k in range(args.batch, len(spec.edits) + 1, args.batch):
        partial = compiled.model_copy(update={"edits": compiled.edits[:k]})
        started, cpu = time.perf_counter(), time.process_time()
        artifact = compile_spec(partial, backend, model=loaded, out=folder / f"{backend}-{k}", overrides=overrides,
                                on=previous, incremental=False)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        if previous is not None:
            shutil.rmtree(previous)
        previous = artifact.path
        with load_edited(loaded, previous) as edited:
            ppl = perplexity(edited.model, loaded.tokenizer, docs)
            row = {"edits": k, "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1), "artifact_mb": round(size_mb(previous), 3), "ppl": ppl}
            if k in wanted:
                scoring = time.perf_counter()
                scored = sampled(spec.edits[:k], args.score_sample)
                row.update(score(edited.model, loaded.tokenizer, scored))
                row["scored"] = len(scored)
                row["fixed_ns"] = score(edited.model, loaded.tokenizer, fixed)["locality"]
                row["earlier"] = score(edited.model, loaded.tokenizer, first)["efficacy"]
                if args.generate:
                    row.update(generated(edited.model, loaded.tokenizer, spec.edits[: args.generate]))
                row["score_seconds"] = round(time.perf_counter() - scoring, 1)
                checkpoints.append(row)
        batches.append(row)
        say(f"{backend}: {k}/{len(spec.edits)} edits, batch in {seconds:.1f} s ({cpu:.1f} CPU s), ppl {ppl}" +
            (f", ES/PS/NS {row['efficacy']}/{row['generalization']}/{row['locality']} {json.dumps(row)}" if k in wanted else ""))
    result = {"batches": batches, "checkpoints": checkpoints, "seconds_total": round(sum(b["seconds"] for b in batches), 1)}
    if args.abba:
        result["abba"] = abba(backend, compiled, loaded, overrides, folder, previous, args.abba)
    with load_edited(loaded, previous) as edited:
        result["overhead"] = round(forward_seconds(edited.model, loaded.tokenizer, fixed) /
                                   forward_seconds(loaded.model, loaded.tokenizer, fixed), 3)
    result["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    shutil.rmtree(previous)
    return result


def compiled_spec(spec, scope_in_spec: bool):
    """The spec the backends compile: without the scope prompts that generalization is scored on."""
    if scope_in_spec:
        return spec
    return spec.model_copy(update={"edits": tuple(e.model_copy(update={"scope": ()}) for e in spec.edits)})


def abba(backend, spec, loaded, overrides, folder, previous, count) -> dict:
    """Edit the first `count` facts back from b to their old answer a (one more `--on` turn)."""
    from editspec.build.attach import load_edited
    from editspec.build.compiler import compile_spec

    back = [e.model_copy(update={"id": f"{e.id}-back", "target": e.old, "old": e.target}) for e in spec.edits[:count]]
    longer = spec.model_copy(update={"edits": (*spec.edits, *back)})
    started = time.perf_counter()
    artifact = compile_spec(longer, backend, model=loaded, out=folder / f"{backend}-abba", overrides=overrides,
                            on=previous, incremental=False)
    seconds = time.perf_counter() - started
    with load_edited(loaded, artifact) as edited:
        returned = score(edited.model, loaded.tokenizer, back)["efficacy"]
    shutil.rmtree(artifact.path)
    return {"edits": count, "returned_to_a": returned, "seconds": round(seconds, 1)}


def fixed_neighbourhood(limit: int, count: int, folder: Path, source: Path | None = None, edited=()):
    """`count` records after the first `limit` as edits whose keep facts are the fixed NS set; with
    `source`, the first `count` records of that CounterFact file that share no edit or keep prompt
    with the `edited` edits."""
    if source is None:
        found = import_spec(limit + count, folder / "fixed").edits[limit:]
        if len(found) < count:
            raise SystemExit(f"only {len(found)} record(s) of {DATA.name} after the first {limit} for the fixed "
                             f"neighbourhood: give --neighbourhood-file")
        return found
    seen = {p for e in edited for p in e.prompts} | {p for e in edited for f in e.keep for p in f.prompts}
    spec = import_spec(None, folder / "fixed", source)
    return tuple(e for e in spec.edits
                 if not seen & ({*e.prompts} | {p for f in e.keep for p in f.prompts}))[:count]


SAMPLE_SEED = 17


def sampled(edits, count: int):
    """A fixed seeded sample of `count` of `edits`, in their order (all of them when `count` is 0 or
    at least their number); the same edits for the same list and count."""
    import random

    if not count or count >= len(edits):
        return tuple(edits)
    chosen = sorted(random.Random(SAMPLE_SEED).sample(range(len(edits)), count))
    return tuple(edits[i] for i in chosen)


def general_docs(count: int) -> list[str]:
    """The first `count` long paragraphs of WikiText-2 (validation), the general text for perplexity."""
    text = (DATA.parent.parent / "corpus" / "wikitext-2-valid.txt").read_text(encoding="utf-8")
    lines = [line.strip() for line in text.splitlines() if len(line.strip()) > 400 and not line.strip().startswith("=")]
    return lines[:count]


def torch_no_grad(function):
    """`torch.no_grad()` as a decorator that imports torch only when the function runs."""
    def run(*args, **kwargs):
        import torch

        with torch.no_grad():
            return function(*args, **kwargs)

    return run


@torch_no_grad
def perplexity(model, tokenizer, docs, max_tokens: int = 128) -> float:
    """exp(mean token NLL) over `docs`, each cut to `max_tokens` tokens, one at a time."""
    import math

    import torch

    total, count = 0.0, 0
    device = model.get_input_embeddings().weight.device
    for doc in docs:
        ids = torch.tensor([tokenizer(doc)["input_ids"][:max_tokens]], device=device)
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        total += float(-logp.gather(1, ids[0, 1:, None]).sum())
        count += ids.shape[1] - 1
    return round(math.exp(total / max(count, 1)), 4)


def forward_seconds(model, tokenizer, edits, repeats: int = 3) -> float:
    """Best of `repeats` timings of one batched forward over the edits' locality prompts."""
    from editspec.verify.protocols import score_targets

    pairs = [(f.prompts[0], f.answer) for e in edits for f in e.keep]
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        score_targets(model, tokenizer, pairs)
        best = min(best, time.perf_counter() - started)
    return best


def size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) / 2**20


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


def generated(model, tokenizer, edits, max_new_tokens: int = 12, chat_tokens: int = 24) -> dict:
    """The edits as users meet them, free generation (greedy): the share of edit prompts whose raw
    continuation contains the new answer (gen_es), of rephrasings (gen_ps), of chat replies to
    the edit prompt as a user message (chat_es), and of keep prompts whose continuation still
    contains the kept answer (gen_ns); with one chat reply per edit kept for reading."""
    from editspec.verify.protocols import contains_answer, generate_texts

    raw = [e.prompts[0] for e in edits]
    rephrased = [(e, e.scope[0]) for e in edits if e.scope]
    kept = [(f.prompts[0], f.answer) for e in edits for f in e.keep[:1]]
    texts = generate_texts(model, tokenizer, raw + [p for _, p in rephrased] + [p for p, _ in kept],
                           max_new_tokens=max_new_tokens)
    replies = generate_texts(model, tokenizer, raw, max_new_tokens=chat_tokens, chat=True)
    hits = lambda outs, answers: round(sum(contains_answer(o, [a]) is not None for o, a in zip(outs, answers)) /  # noqa: E731
                                       max(len(answers), 1), 4)
    n, m = len(raw), len(rephrased)
    return {"gen_es": hits(texts[:n], [e.target for e in edits]),
            "gen_ps": hits(texts[n:n + m], [e.target for e, _ in rephrased]),
            "gen_ns": hits(texts[n + m:], [a for _, a in kept]),
            "chat_es": hits(replies, [e.target for e in edits]),
            "chat_replies": [f"{e.target}: {r!r}" for e, r in zip(edits, replies)]}


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
    parser.add_argument("--backends", default="ultraedit,wise")
    parser.add_argument("--limit", type=int, default=1000, help="number of sequential edits (a multiple of --batch)")
    parser.add_argument("--batch", type=int, default=100, help="edits per `--on` turn")
    parser.add_argument("--checkpoints", type=lambda text: [int(x) for x in text.split(",") if x], default=[],
                        help="edit counts to score at (comma-separated; the last count always)")
    parser.add_argument("--neighbourhood", type=int, default=100, help="records in the fixed neighbourhood set")
    parser.add_argument("--neighbourhood-file", type=Path, default=None, metavar="PATH",
                        help="take the fixed neighbourhood set from this CounterFact file (its records that share no "
                        "prompt with the edits) instead of the records after --limit")
    parser.add_argument("--score-sample", type=int, default=0, metavar="N",
                        help="score ES / PS / NS at each checkpoint on a fixed seeded sample of N of the edits so far, "
                        "and the unedited model on each checkpoint's sample (0: every edit)")
    parser.add_argument("--ppl-docs", type=int, default=16, help="general-text paragraphs for perplexity")
    parser.add_argument("--abba", type=int, default=20, help="first-batch edits edited back to their old answer (0: skip)")
    parser.add_argument("--model", default=None, help="model name or path (default: the embedded default)")
    parser.add_argument("--set", action="append", default=[], metavar="BACKEND:KEY=VALUE")
    parser.add_argument("--scope-in-spec", action="store_true",
                        help="compile the rephrasings that generalization is scored on into the spec (default: held "
                        "out, so no method has seen them)")
    parser.add_argument("--generate", type=int, default=0, metavar="K",
                        help="at each checkpoint, also greedy generation for the first K edits: raw continuation, "
                        "rephrasing and chat reply containing the new answer, keep prompt its old one (0: skip)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.limit % args.batch:
        parser.error("--limit must be a multiple of --batch")
    args.abba = min(args.abba, args.batch)
    from editspec.model.loading import load_model

    say = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    sets = parse_sets(args.set)
    loaded = load_model(args.model)
    results = {}
    with tempfile.TemporaryDirectory(prefix="editspec-lifelong-") as tmp:
        spec = import_spec(args.limit, Path(tmp))
        usable = len(spec.edits) - len(spec.edits) % args.batch
        if usable < len(spec.edits):  # the importer leaves out edits that conflict with earlier ones
            say(f"{args.limit} records gave {len(spec.edits)} edits; the chain is the first {usable}, "
                f"{usable // args.batch} turns of {args.batch}")
            spec = spec.model_copy(update={"edits": spec.edits[:usable]})
        fixed = fixed_neighbourhood(args.limit, args.neighbourhood, Path(tmp), args.neighbourhood_file, spec.edits)
        docs = general_docs(args.ppl_docs)
        scored = sampled(spec.edits, args.score_sample)
        unedited = {"edits": 0, **score(loaded.model, loaded.tokenizer, scored), "scored": len(scored),
                    **(generated(loaded.model, loaded.tokenizer, spec.edits[: args.generate]) if args.generate else {}),
                    "fixed_ns": score(loaded.model, loaded.tokenizer, fixed)["locality"],
                    "ppl": perplexity(loaded.model, loaded.tokenizer, docs)}
        rows = [unedited]
        if args.score_sample:  # the unedited model on each checkpoint's own sample, beside the edited figures
            for k in sorted(set(args.checkpoints) - {len(spec.edits)}):
                scored = sampled(spec.edits[:k], args.score_sample)
                rows.append({**unedited, "edits": 0, "sample_of": k, "scored": len(scored),
                             **score(loaded.model, loaded.tokenizer, scored)})
            say(f"unedited: {json.dumps(rows)}")
        results["unedited"] = {"checkpoints": rows, "batches": [], "seconds_total": 0.0}
        for backend in filter(None, args.backends.split(",")):
            results[backend] = run_backend(backend, spec, loaded, sets.get(backend, {}), Path(tmp), args, fixed, docs, say)
    args.edits = len(spec.edits)
    print(json.dumps(results, indent=2) if args.json else table(results, args))
    return 0


def table(results: dict, args) -> str:
    """Checkpoint rows per method, then time, size, a -> b -> a and overhead; with a 10k extrapolation."""
    lines = [f"{'method':<10} {'edits':>6} {'ES':>6} {'PS':>6} {'NS':>6} {'fixNS':>6} {'early':>6} {'ppl':>8} "
             f"{'s/batch':>8} {'MB':>8}"]
    for name, r in results.items():
        times = [b["seconds"] for b in r["batches"]]
        for c in r["checkpoints"]:
            edits = f"0@{c['sample_of']}" if "sample_of" in c else c["edits"]
            of = c.get("sample_of") or c["edits"] or args.edits  # the edits the row speaks for
            lines.append(f"{name:<10} {edits!s:>6} {c.get('efficacy')!s:>6} {c.get('generalization')!s:>6} "
                         f"{c.get('locality')!s:>6} {c.get('fixed_ns')!s:>6} {c.get('earlier', '-')!s:>6} "
                         f"{c.get('ppl')!s:>8} {statistics.mean(times) if times else 0:>8.1f} "
                         f"{c.get('artifact_mb', 0):>8}"
                         + (f"  (ES/PS/NS on a seeded sample of {c['scored']})" if c.get("scored", 0) < of else ""))
            if "gen_es" in c:
                lines.append(f"{'':<10} {'':>6} free generation, first {args.generate}: raw {c['gen_es']}, rephrased "
                             f"{c['gen_ps']}, chat {c['chat_es']}, keep {c['gen_ns']}; chat e.g. "
                             + " | ".join(c["chat_replies"][:3]))
        if times:
            per_edit = sum(times) / r["batches"][-1]["edits"]
            cpus = [b["cpu_seconds"] for b in r["batches"] if "cpu_seconds" in b]
            lines.append(f"{'':<10} total {r['seconds_total']} s ({sum(cpus):.1f} CPU s); 10,000 edits at this rate: {per_edit * 10000 / 60:.0f} min; "
                         f"peak RSS {r['peak_rss_gb']} GB; request overhead x{r['overhead']}"
                         + (f"; a->b->a returned {r['abba']['returned_to_a']} of {r['abba']['edits']}" if "abba" in r else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
