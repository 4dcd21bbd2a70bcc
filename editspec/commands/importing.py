"""`editspec import`: public benchmark files and users' own tables as `.edit` specs.  Never imports torch."""
from __future__ import annotations

import os

import click

from editspec.importers import IMPORTERS


# The table import's options: (flag, parameter, metavar, help).
TABLE_OPTIONS = [
    ("--subject", "subject", "COLUMN", "table: the column holding each row's subject (required)."),
    ("--new", "new", "COLUMN", "table: the column holding the new object (required)."),
    ("--old", "old", "COLUMN", "table: the column holding what the fact was (`was`)."),
    ("--prompt", "prompt", "COLUMN", "table: the column holding each row's prompt, with `{subject}` or naming the subject."),
    ("--relation", "relation", "[NAME=]TEMPLATE", "table: one prompt for every row instead of --prompt, "
     "e.g. \"city=The {subject} is in the city of\"."),
    ("--question", "question", "COLUMN", "table: the column holding a question (or one template holding `{subject}`)."),
    ("--aliases", "aliases", "COLUMN", "table: the column holding other accepted answers, split on `|`."),
    ("--keep-prompt", "keep_prompt", "COLUMN", "table: the column holding a prompt whose answer must not change."),
    ("--keep-answer", "keep_answer", "COLUMN", "table: the column holding that prompt's answer."),
    ("--scope", "scope", "COLUMN", "table: the column holding a paraphrase that must give the new object."),
]


def _table_options(command):
    for flag, name, metavar, text in reversed(TABLE_OPTIONS):
        command = click.option(flag, name, metavar=metavar, default=None, help=text)(command)
    return command


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
@_table_options
def import_(kind: str, file: str, output: str, limit: int | None, model: str | None,
            eval_file: str | None, hard_neg_file: str | None, threshold: str, **columns: str | None) -> None:
    """Turn a FILE of format KIND into a spec that checks clean.

    \b
    counterfact  CounterFact, ROME layout or the flattened toolkit layout (told apart by
                 their fields): each rewrite an edit, paraphrases -> scope, neighbourhood
                 prompts -> keep
    zsre         zsRE (MEND fields): rephrase -> scope, loc -> keep, portability -> implies
    mquake       MQuAKE: each rewrite an edit, multi-hop questions -> implies
    canonical    a canonical-examples training file: canonical blocks with checks (evaluation
                 file) and hard negatives (keep)
    table        your own facts, one per row of a .csv, .tsv or .jsonl file, the columns
                 named by --subject, --new and the other table options

    Edits the language cannot hold together (a second, conflicting edit of the same subject
    and prompt; a keep fact another edit changes) are left out and counted on stderr.

    \b
    Examples:
      editspec import counterfact ../shared/data/counterfact/counterfact_500.json -o cf.edit
      editspec import zsre ../shared/data/zsre/zsre_mend_train-1k.json -o zsre.edit --limit 100
      editspec import canonical .../country_capital/split/country_capital_fixed-val.jsonl -o capitals.edit

    \b
    A table, landmarks.csv (a header row, then one fact per row):
      landmark,city,was,also,neighbour,its_city
      Eiffel Tower,Rome,Paris,Roma|Rome Italy,The Brandenburg Gate is in the city of,Berlin
    \b
      editspec import table landmarks.csv -o landmarks.edit \\
          --relation "city=The {subject} is in the city of" \\
          --subject landmark --new city --old was --aliases also \\
          --keep-prompt neighbour --keep-answer its_city
    \b
    writes
      relation city {
        prompt "The {subject} is in the city of"
      }
      edit city("Eiffel Tower") -> "Rome" | "Roma" | "Rome Italy" was "Paris" {
        keep { "The Brandenburg Gate is in the city of" -> "Berlin" }
      }
    With --prompt COLUMN instead of --relation, each row brings its prompt ("The Eiffel
    Tower is in the city of" or "The {subject} is in the city of"); rows with the same
    template share a relation. An empty cell in an optional column means none. A mistake
    (a missing column, an empty subject, a prompt that does not name the subject) is
    reported with its row (as a spreadsheet numbers them: the header is row 1) and column.
    """
    from pathlib import Path

    from editspec.commands.frontend import _write_atomically
    from editspec.importers import import_file

    given = [flag for flag, name, _, _ in TABLE_OPTIONS if columns[name] is not None]
    options = {}
    if kind == "canonical":
        options = dict(eval_file=Path(eval_file) if eval_file else None,
                       hard_neg_file=Path(hard_neg_file) if hard_neg_file else None, threshold=threshold)
    elif eval_file or hard_neg_file:
        raise click.UsageError("--eval and --hard-neg apply to `canonical` imports only")
    if kind == "table":
        options = columns
    elif given:
        raise click.UsageError(f"{', '.join(given)} apply to `table` imports only")
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
