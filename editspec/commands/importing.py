"""`editspec import`: public benchmark files as `.edit` specs.  Never imports torch."""
from __future__ import annotations

import os

import click

from editspec.importers import IMPORTERS


@click.command(name="import")
@click.argument("kind", type=click.Choice(sorted(IMPORTERS)), metavar="KIND")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False),
              help="Where to write the spec (`-` for standard output).")
@click.option("--limit", type=click.IntRange(min=0), default=None, help="Import only the first N records.")
@click.option("--model", default=None, help="Add a `model` line naming the model to edit.")
@click.option("--eval", "eval_file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="canonical: the evaluation file (default: found next to FILE).")
@click.option("--hard-neg", "hard_neg_file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="canonical: the hard-negative file (default: found next to FILE).")
@click.option("--threshold", default="1/5", show_default=True,
              help="canonical: the `check p >=` threshold, as written in the spec (e.g. 1/5, 0.2, 20%).")
def import_(kind: str, file: str, output: str, limit: int | None, model: str | None,
            eval_file: str | None, hard_neg_file: str | None, threshold: str) -> None:
    """Turn a benchmark FILE of format KIND into a spec that checks clean.

    \b
    counterfact  CounterFact, ROME layout or the flattened toolkit layout: each rewrite an
                 edit, paraphrases -> scope, neighbourhood prompts -> keep
    zsre         zsRE (MEND fields): rephrase -> scope, loc -> keep, portability -> implies
    mquake       MQuAKE: each rewrite an edit, multi-hop questions -> implies
    canonical    a canonical-examples training file: canonical blocks with checks (evaluation
                 file) and hard negatives (keep)

    Edits the language cannot hold together (a second, conflicting edit of the same subject
    and prompt; a keep fact another edit changes) are left out and counted on stderr.

    \b
    Examples:
      editspec import counterfact ../shared/data/counterfact/counterfact_500.json -o cf.edit
      editspec import zsre ../shared/data/zsre/zsre_mend_train-1k.json -o zsre.edit --limit 100
      editspec import canonical .../country_capital/split/country_capital_fixed-val.jsonl -o capitals.edit
    """
    from pathlib import Path

    from editspec.commands.frontend import _write_atomically
    from editspec.importers import import_file

    options = {}
    if kind == "canonical":
        options = dict(eval_file=Path(eval_file) if eval_file else None,
                       hard_neg_file=Path(hard_neg_file) if hard_neg_file else None, threshold=threshold)
    elif eval_file or hard_neg_file:
        raise click.UsageError("--eval and --hard-neg apply to `canonical` imports only")
    result = import_file(kind, file, limit=limit, model=model,
                         out_name=output if output != "-" else "<stdout>", **options)
    if output == "-":
        click.echo(result.text, nl=False)
    else:
        if os.path.dirname(output):
            os.makedirs(os.path.dirname(output), exist_ok=True)
        _write_atomically(output, result.text)
    click.echo(f"{file}: {result.summary()} -> {output}", err=True)


COMMANDS = [import_]
