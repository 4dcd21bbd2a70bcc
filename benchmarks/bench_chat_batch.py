"""How memit's chat scores fall with batch size (issue 16): the same facts edited alone and among others.

The first `--n` zsRE records are imported as one spec (as `bench_chat.py` does).  Each fact's
residual target z is optimised once, on the unedited model: a fact's target does not depend on
the others in its batch (each has its own δ).  Then, for every size K in `--sizes`, memit's
solve inserts the first K facts in one batch (one round: memit's `passes` 1), and verify's `chat`
protocol scores the edited model.  The figures that matter are the probe's: chat efficacy and generalization of the same
first `--probe` facts at every K, so a fall is the other facts' doing, not harder facts.  Beside
them: chat efficacy / generalization / locality over the K facts of the batch, and the share of
each probe fact's δ that the update delivers at its chat row's subject token (1.0 = all of it).

    python benchmarks/bench_chat_batch.py --n 100 --sizes 12,38,76 --probe 12
    python benchmarks/bench_chat_batch.py --n 20 --sizes 4,14 --probe 4 --set mom2_update_weight=5000

About 10 minutes for the targets of 76 facts plus 2-5 minutes per size on one loaded core
(the unedited model's chat replies are cached after the first run).
"""
from __future__ import annotations

import argparse
import time
import types
from pathlib import Path

from bench_chat import import_spec

METRICS = ("efficacy", "generalization", "locality")


def edit_index(spec, line: int) -> int:
    """The index of the edit whose block holds spec line `line` (edits are in spec order)."""
    return max((i for i, e in enumerate(spec.edits) if e.span.line <= line), default=-1)


def chat_row_shares(model, layout, prepared, targets, deltas, *, last: int, pad: int) -> list[float]:
    """Per fact, the share of its δ that `deltas` add to h^L (L = `last`) at its first chat row's subject token."""
    from editspec.families.locate.keys import template_keys
    from editspec.model.deltas import apply_deltas

    _, before = template_keys(model, layout, prepared, [last], pad=pad, block_layer=last, every_row=True)
    with apply_deltas(model, deltas):
        _, after = template_keys(model, layout, prepared, [last], pad=pad, block_layer=last, every_row=True)
    shares = []
    for i, prep in enumerate(prepared):
        row = prep.chat.index(True) if True in prep.chat else 0
        delta = targets[i] - before[i][0]  # δ was optimised at the bare prompt (row 0)
        shares.append(float((after[i][row] - before[i][row]) @ delta / (delta @ delta)))
    return shares


def run(args) -> int:
    import torch

    from editspec.backends.memit.backend import MemitBackend
    from editspec.backends.memit.config import MemitConfig
    from editspec.build.compiler import parse_setting_value
    from editspec.families.locate import optimise_targets, prepare_requests, revert_all, spread_over_layers
    from editspec.families.locate.backend import edit_requests
    from editspec.lang.resolve import load_spec
    from editspec.model.chat import chat_enabled
    from editspec.model.deltas import apply_deltas
    from editspec.model.layout import layout_for
    from editspec.model.loading import load_model
    from editspec.model.tokens import pad_id
    from editspec.backends.memit.memit import memit_solver
    from editspec.verify.engine import verify

    settings = dict(item.split("=", 1) for item in args.set)
    config = MemitConfig(**{k: parse_setting_value(v) for k, v in settings.items()})
    if "passes" in settings:
        raise SystemExit("bench_chat_batch.py measures one round of targets and solve (the facts' targets are shared "
                         "across sizes); `passes` does not apply: compare rounds with `editspec compile ... --set passes=1`")
    loaded = load_model()
    model, tokenizer = loaded.model, loaded.tokenizer
    spec_file = import_spec("zsre", args.n, Path(args.out))
    spec = load_spec(spec_file)
    sizes = sorted({min(int(s), len(spec.edits)) for s in args.sizes.split(",") if s})
    probe = min(args.probe, sizes[0])
    print(f"{len(spec.edits)} edits from {args.n} zsRE records; sizes {sizes}; probe: the first {probe}; "
          f"{loaded.name}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)", flush=True)

    job = types.SimpleNamespace(model=loaded, config=config, progress=lambda message: print(f"  {message}", flush=True))
    prepared_data = MemitBackend().prepare(job)
    layout, pad, layers = layout_for(model), pad_id(tokenizer), sorted(config.layers)
    prepared = prepare_requests(tokenizer, edit_requests(spec.edits[:sizes[-1]], tokenizer), prepared_data["templates"],
                                chat=chat_enabled(tokenizer, config.chat), answer_end=config.answer_end)
    started = time.perf_counter()
    targets = optimise_targets(model, [layout.block_at(layers[-1])] * len(prepared), prepared, config.optim(), pad=pad)
    print(f"  targets of {len(prepared)} facts: {time.perf_counter() - started:.0f} s", flush=True)
    solve = memit_solver(prepared_data["stats"], config)
    lines = ["| batch K | probe chat eff | probe chat gen | probe δ share at the chat row | "
             "batch chat eff / gen / loc |", "|---|---|---|---|---|"]
    for size in sizes:
        deltas, handles, _ = spread_over_layers(model, layout, prepared[:size], layers, targets.value[:size], solve,
                                                pad=pad)
        revert_all(handles)
        report = verify(spec, model, tokenizer, attach=lambda m, deltas=deltas: apply_deltas(m, deltas), weights_hash=loaded.weights_hash, protocol="chat",
                        metrics=METRICS)
        passed = {(m, scope): [0, 0] for m in METRICS for scope in ("probe", "batch")}
        for result in report.results:
            if result.check.protocol != "chat":
                continue
            edit = edit_index(spec, result.check.line)
            for scope, limit in (("probe", probe), ("batch", size)):
                if 0 <= edit < limit:
                    passed[(result.check.metric, scope)][0] += int(result.passed)
                    passed[(result.check.metric, scope)][1] += 1
        shares = chat_row_shares(model, layout, prepared[:probe], targets.value[:probe], deltas, last=layers[-1],
                                  pad=pad)
        frac = {key: f"{a}/{b}" for key, (a, b) in passed.items()}
        batch = " / ".join(f"{passed[(m, 'batch')][0] / max(passed[(m, 'batch')][1], 1):.2f}" for m in METRICS)
        lines.append(f"| {size} | {frac[('efficacy', 'probe')]} | {frac[('generalization', 'probe')]} | "
                     f"{sum(shares) / len(shares):.2f} | {batch} |")
        print(lines[-1], flush=True)
    print("\n" + "\n".join(lines))
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100, help="zsRE records to import (the contradiction filter leaves fewer edits).")
    parser.add_argument("--sizes", default="12,38,76", help="Batch sizes K: the first K edits in one memit batch.")
    parser.add_argument("--probe", type=int, default=12, help="The first P edits, scored at every size (at most the smallest K).")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="A memit setting, e.g. mom2_update_weight=5000.")
    parser.add_argument("--out", default="build/bench_chat_batch", help="The imported spec goes here.")
    raise SystemExit(run(parser.parse_args()))


if __name__ == "__main__":
    main()
