"""Importers: public knowledge-editing benchmarks as `.edit` specs.

`import_file(kind, path)` reads one benchmark file and returns the spec text (formatted, and
checked clean before it is returned) with counts of what was read, written and left out.

Example:
    >>> result = import_file("zsre", "../shared/data/zsre/zsre_mend_train-1k.json", limit=5)  # doctest: +SKIP
    >>> result.records, result.edits                                                         # doctest: +SKIP
    (5, 5)
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from editspec.errors import EditspecError
from editspec.importers.canonical import canonical
from editspec.importers.factual import Imported, counterfact, mquake, zsre
from editspec.importers.table import table

IMPORTERS: dict[str, Callable[..., Imported]] = {
    "counterfact": counterfact,
    "zsre": zsre,
    "mquake": mquake,
    "canonical": canonical,
    "table": table,
}


@dataclass
class ImportResult:
    """The spec text and what went into it."""

    text: str
    records: int
    edits: int
    canonical: int
    relations: int
    left_out: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        parts = [f"{self.records} records -> {self.edits} edits, {self.relations} relations, {self.canonical} canonical"]
        parts += [f"left out {n} {why}" for why, n in self.left_out.items() if n]
        return "; ".join(parts)


def import_file(kind: str, path: str | os.PathLike, *, limit: int | None = None, model: str | None = None,
                out_name: str = "<import>", **options) -> ImportResult:
    """Read a benchmark file of `kind` (one of `IMPORTERS`) and write it as a spec that checks clean.

    `limit` keeps the first N records; `options` go to the importer (canonical: `eval_file`,
    `hard_neg_file`, `threshold`; table: the column names, see `editspec.importers.table`).
    """
    from editspec.lang.resolve import analyse

    if kind not in IMPORTERS:
        from editspec.errors import did_you_mean

        raise EditspecError(f"unknown import format `{kind}`", hint=did_you_mean(kind, IMPORTERS))
    source = Path(path)
    if not source.is_file():
        raise EditspecError(f"no such file: {source}")
    if limit is not None and limit < 0:
        raise EditspecError("--limit must not be negative")
    imported = IMPORTERS[kind](source, limit, **options)
    builder = imported.builder
    header = [f"Imported by `editspec import {kind}` from {source.name}"
              + (f" (first {limit} records)" if limit is not None else "") + ".", *imported.description]
    text = builder.render(header, model=model)
    analysis = analyse(out_name, text=text)
    if analysis.spec is None:  # the importer wrote something the language rejects: say where
        raise EditspecError(analysis.errors)
    return ImportResult(text=text, records=imported.records, edits=len(analysis.spec.edits),
                        canonical=len(analysis.spec.canonical), relations=len(analysis.spec.relations),
                        left_out={why: n for why, n in builder.left_out.items() if n})
