"""Edits that hold where the model is used (issue 16): zsRE and CounterFact edits asked in chat.

N zsRE and N CounterFact records are imported as specs (`editspec import`, which gives each
relation its `question`), then every backend compiles each spec once on the default model and
is verified by the shared engine: efficacy / generalization / locality under `compare`,
`generate` and `chat`, fluency, and compile time per edit.  "chat loc, known" is chat locality
on the keep facts the unedited model answered right (docs/measurement.md#chat-locality): the
others are its own made-up replies, which any weight change reshuffles.  `rome` inserts the spec's edits one
rank-one update at a time; `memit` and `alphaedit` edit the whole spec in one batch; `ike` and
`retrieval` are verified through the in-process API, as `editspec bench` does.  `--single`
backends also get a row "(single)": each edit compiled alone on the unedited model and verified
alone, figures pooled over the edits (how ROME is usually scored, and the issue's "rome (single
edits)"); it costs a compile, a baseline and a verify per edit.

    python benchmarks/bench_chat.py --n 20
    python benchmarks/bench_chat.py --n 100 --backends rome,memit --datasets zsre
    python benchmarks/bench_chat.py --n 20 --json build/bench_chat.json
    python benchmarks/bench_chat.py --n 20 --backends "" --single rome
    python benchmarks/bench_chat.py --n 100 --backends memit --datasets zsre --set tail_kl=0.3

The issue's figures are for N = 100; on a shared 2-core machine 20 + 20 takes about an hour.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FILES = {"zsre": ("zsre", DATA / "zsre" / "zsre_mend_eval_portability_gpt4.json"),
         "counterfact": ("counterfact", DATA / "counterfact" / "counterfact_500.json")}
BACKENDS = "rome,memit,alphaedit,ft,grace,melo,ike,retrieval"
METRICS = ("efficacy", "generalization", "locality")
PROTOCOLS = ("compare", "generate", "chat")


# The goals, as expectations: they also make the API-verified plugins ask in chat.
GOALS = "\nexpect {\n  efficacy[chat] >= 0.9\n  generalization[chat] >= 0.7\n  locality[chat] >= 0.9\n}\n"


def import_spec(dataset: str, n: int, folder: Path) -> Path:
    """The first `n` records of `dataset` as a spec file under `folder`, with the chat goals."""
    from editspec.importers import import_file

    kind, path = FILES[dataset]
    if not path.is_file():
        raise SystemExit(f"{path} not found: the benchmark reads ../shared/data next to the repository")
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{dataset}_{n}.edit"
    out.write_text(import_file(kind, path, limit=n).text + GOALS, encoding="utf-8")
    return out


def row(run, extra_totals, edits: int) -> dict:
    """One backend's figures: {protocol: {metric: value}}, fluency, seconds per edit."""
    figures: dict = {p: {} for p in PROTOCOLS}
    fluency = None
    for total in [*run.totals, *extra_totals]:
        if total["metric"] in METRICS and total["protocol"] in figures:
            figures[total["protocol"]][total["metric"]] = round(total["value"], 3)
        if total["metric"] == "fluency":
            fluency = round(total["value"], 3)
    known = run.kept_by_basis.get("keep answer")
    return {"backend": run.backend, "status": run.status, "reason": run.reason.splitlines()[0] if run.reason else "",
            **{p: figures[p] for p in PROTOCOLS}, "fluency": fluency, "kept_by_basis": run.kept_by_basis,
            "chat_loc_known": f"{known[0]}/{known[1]}" if known else "—",
            "s_per_edit": round(run.compile_s / edits, 2) if run.compile_s is not None else None}


def generate_totals(spec, run, loaded, seed: int) -> list[dict]:
    """A white-box artifact verified again under `generate` (black-box runs already are)."""
    from editspec.verify.session import verify_spec

    if not run.white_box or run.artifact is None:
        return []
    report = verify_spec(spec, artifact=run.artifact, model=loaded, seed=seed, protocol="generate", chat="off",
                         progress=None)
    return [{"metric": t.metric, "protocol": t.protocol, "value": t.value, "passed": t.passed, "count": t.count}
            for t in report.totals.values() if t.protocol == "generate"]  # its other protocols are in the first run


def single_edit_row(spec, name: str, loaded, out: Path, seed: int, say, overrides=None) -> dict:
    """`name` compiled and verified one edit at a time, each on the unedited model (the issue's
    "rome (single edits)"), its figures pooled over the edits: passes over checks, fluency averaged.

    Each edit's figures are saved beside its artifact (`NNN/figures.json`), so a stopped run picks up
    where it stopped: an edit whose saved figures name the same edit, seed and settings is not run again."""
    pooled: dict = {}
    kept: dict = {}
    compile_s, failed = 0.0, 0
    for index, edit in enumerate(spec.edits):
        one = spec.model_copy(update={"edits": (edit,)})
        figures, saved = single_edit_figures(one, name, loaded, out / f"{index:03d}", seed, overrides)
        failed += figures["status"] != "passed"
        compile_s += figures["compile_s"] or 0.0
        for total in {(t["metric"], t["protocol"]): t for t in reversed(figures["totals"])}.values():  # once each
            tally = pooled.setdefault((total["metric"], total["protocol"]), [0, 0, 0.0, 0])
            tally[0] += total.get("passed") or 0
            tally[1] += total.get("count") or 0
            tally[2] += total["value"]
            tally[3] += 1
        for basis, (passed, count) in figures["kept_by_basis"].items():
            kept[basis] = [a + b for a, b in zip(kept.get(basis, [0, 0]), (passed, count))]
        chat = [pooled.get((metric, "chat"), [0, 0]) for metric in METRICS]
        say(f"{name} (single) {index + 1}/{len(spec.edits)}: {figures['status']}{' (saved)' if saved else ''}; "
            "chat so far " + " / ".join(f"{m[:3]} {p}/{c}" for m, (p, c, *_) in zip(METRICS, chat)))
    from editspec.bench.runner import BackendRun

    totals = [{"metric": metric, "protocol": protocol, "passed": passed, "count": count,
               "value": values / runs if metric == "fluency" or not count else passed / count}
              for (metric, protocol), (passed, count, values, runs) in pooled.items()]
    run = BackendRun(backend=f"{name} (single)", white_box=True, status="failed" if failed else "passed",
                     reason=f"{failed} of {len(spec.edits)} single-edit specs failed an expectation" if failed else "",
                     totals=totals, compile_s=compile_s, kept_by_basis=kept)
    return row(run, [], len(spec.edits))


def single_edit_figures(one, name: str, loaded, out: Path, seed: int, overrides) -> tuple[dict, bool]:
    """One single-edit spec's figures ({status, compile_s, totals, kept_by_basis}) and whether they were
    read from an earlier run's `figures.json` rather than measured now."""
    from editspec.bench.runner import run_bench

    key = {"edit": one.edits[0].id, "seed": seed, "overrides": {k: str(v) for k, v in (overrides or {}).items()}}
    saved = out / "figures.json"
    if saved.exists():
        figures = json.loads(saved.read_text())
        if figures.get("key") == key:
            return figures, True
    run = run_bench(one, [name], model=loaded, out=out, seed=seed, incremental=False, overrides=overrides).runs[0]
    if run.status == "error":
        raise SystemExit(f"{name}, edit {one.edits[0].id}: {run.reason}")
    figures = {"key": key, "status": run.status, "compile_s": run.compile_s, "kept_by_basis": run.kept_by_basis,
               "totals": [*run.totals, *generate_totals(one, run, loaded, seed)]}
    saved.write_text(json.dumps(figures, indent=1))
    return figures, False


def table(rows: list[dict]) -> str:
    """Markdown: a row per backend, columns per protocol and metric."""
    heads = [f"{p[:4]} {m[:3]}" for p in PROTOCOLS for m in METRICS]
    lines = ["| backend | " + " | ".join(heads) + " | chat loc, known | fluency | s/edit |",
             "|---" * (len(heads) + 4) + "|"]
    for r in rows:
        if r["status"] == "error":
            lines.append(f"| {r['backend']} | could not run: {r['reason']} |")
            continue
        cells = [r[p].get(m) for p in PROTOCOLS for m in METRICS]
        lines.append(f"| {r['backend']} | " + " | ".join("—" if c is None else f"{c:.2f}" for c in cells)
                     + f" | {r['chat_loc_known']} | {r['fluency'] if r['fluency'] is not None else '—'}"
                     f" | {r['s_per_edit']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20, help="Records per dataset (the issue asks 100).")
    parser.add_argument("--backends", default=BACKENDS, help=f"Comma-separated backends (default {BACKENDS}).")
    parser.add_argument("--datasets", default="zsre,counterfact", help="Comma-separated: zsre, counterfact.")
    parser.add_argument("--out", default="build/bench_chat", help="Specs and artifacts go here.")
    parser.add_argument("--json", help="Also write every figure as JSON to this file.")
    parser.add_argument("--single", default="", help="Comma-separated backends also run one edit at a time, each "
                        "compiled on the unedited model and verified alone, figures pooled (the issue's \"rome (single "
                        "edits)\"; the `--backends` row of a sequential backend inserts every edit one after another).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="A backend setting for every row that has it (`tail_kl=0.3`), or for one backend "
                        "(`memit.passes=1`); repeatable, as `editspec bench --set`.")
    args = parser.parse_args()
    from editspec.commands.options import parse_settings
    from editspec.errors import EditspecError

    try:
        overrides = parse_settings(tuple(args.overrides))
    except EditspecError as error:
        raise SystemExit(error.render()) from None

    import torch

    from editspec.bench.runner import run_bench
    from editspec.model.loading import load_model
    from editspec.lang.resolve import load_spec

    torch.set_num_threads(max(torch.get_num_threads(), 1))
    loaded = load_model()
    backends = [b for b in args.backends.split(",") if b]
    results = {}
    for dataset in [d for d in args.datasets.split(",") if d]:
        spec_file = import_spec(dataset, args.n, Path(args.out))
        spec = load_spec(spec_file)
        started = time.perf_counter()
        say = lambda message: print(f"  {dataset}: {message}", flush=True)  # noqa: E731
        runs = run_bench(spec, backends, model=loaded, out=Path(args.out) / dataset, seed=args.seed,
                         overrides=overrides, progress=say).runs if backends else []
        rows = [row(run, generate_totals(spec, run, loaded, args.seed), len(spec.edits)) for run in runs]
        rows += [single_edit_row(spec, name, loaded, Path(args.out) / dataset / f"{name}-single", args.seed, say,
                                 overrides)
                 for name in args.single.split(",") if name]
        results[dataset] = {"edits": len(spec.edits), "seconds": round(time.perf_counter() - started, 1), "rows": rows}
        print(f"\n{dataset}: {len(spec.edits)} edits, {loaded.name}, torch {torch.__version__}\n{table(rows)}\n", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
