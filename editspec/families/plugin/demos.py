"""IKE demonstrations (docs/methods/ike.md): copy, update and retain, nearest last.

Each demonstration is `{"kind", "fact", "prompt", "answer"}`:

| kind   | prompt                           | answer              |
|--------|----------------------------------|---------------------|
| copy   | the edit's own prompt            | its new object      |
| update | a paraphrase, question or scope  | its new object      |
| retain | a keep constraint's prompt       | its unchanged answer |

Kinds come in the ratio 1:3:4 (4/12/16 of 32), shuffled; the i-th demonstration comes from
the i-th most similar edit, and the list is reversed so that the most similar edit sits
nearest the query.  An edit lacking the kind asked of it gives a copy demonstration instead.
Random choices are seeded by the plugin seed and the query text, so a request always gets
the same prompt.

>>> [d["kind"] for d in demonstrations(records, ranked=[0], count=8, seed=0, query="q")]  # doctest: +SKIP
['retain', 'update', 'copy', ...]
"""
from __future__ import annotations

import random
from typing import Sequence

RATIO = (("copy", 1), ("update", 3), ("retain", 4))


def kind_counts(count: int) -> dict[str, int]:
    """How many demonstrations of each kind make up `count` (1:3:4, remainders to retain).

    >>> kind_counts(32)
    {'copy': 4, 'update': 12, 'retain': 16}
    """
    total = sum(weight for _, weight in RATIO)
    counts = {kind: count * weight // total for kind, weight in RATIO}
    counts["retain"] += count - sum(counts.values())
    return counts


def one_demonstration(record: dict, kind: str, rng: random.Random) -> dict:
    """One demonstration of `kind` taken from `record` (a copy when it has none of that kind)."""
    updates = record["updates"] + record["questions"]
    if kind == "update" and updates:
        return {"kind": kind, "fact": record["fact"], "prompt": rng.choice(updates), "answer": record["target"]}
    if kind == "retain" and record["keep"]:
        keep = rng.choice(record["keep"])
        return {"kind": kind, "fact": record["fact"], "prompt": keep["prompt"], "answer": keep["answer"]}
    return {"kind": "copy", "fact": record["fact"], "prompt": record["prompt"], "answer": record["target"]}


def demonstrations(records: Sequence[dict], ranked: Sequence[int], *, count: int, seed: int,
                   query: str) -> list[dict]:
    """`count` demonstrations from the records in `ranked` order (most similar first), returned
    least similar first; the edit's own copy demonstration is appended by the caller's template.

    With fewer ranked records than `count`, the ranking is walked again from the top.
    """
    if not ranked or count <= 0:
        return []
    rng = random.Random(f"{seed}\0{query}")
    kinds = [kind for kind, n in kind_counts(count).items() for _ in range(n)]
    rng.shuffle(kinds)
    chosen = [one_demonstration(records[ranked[i % len(ranked)]], kind, rng) for i, kind in enumerate(kinds)]
    chosen.reverse()
    return chosen


def copy_demonstration(record: dict) -> dict:
    """The edit's own copy demonstration, which IKE places right before the query."""
    return {"kind": "copy", "fact": record["fact"], "prompt": record["prompt"], "answer": record["target"]}
