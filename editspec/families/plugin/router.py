"""The scope router: does any edit apply to this request, and which?

An edit's score for a query is the cosine similarity between the query and the edit's best
key prompt, plus `mention_bonus` when the query names the edit's subject (word-bounded,
case-insensitive).  The subject test is what separates "Angola is part of the continent of"
(in scope of an Angola edit) from "Ghana is part of the continent of" (same relation, same
shape, not in scope), which embeddings alone score almost alike.  An edit applies when its
score reaches the threshold τ, calibrated per spec (docs/methods/plugin.md#the-scope-router):

- positives: each key prompt of an edit, scored against the edit's *other* keys (leave one
  out), so a paraphrase counts only if the rest of the spec would have found it;
- negatives: every keep constraint's prompt, scored against the whole memory;
- τ maximises Youden's J (hit rate minus false-positive rate), placed in the middle of the
  widest gap among the best cuts; with no positives or no negatives, `default_threshold`.

>>> router = ScopeRouter(memory, threshold=1.0, mention_bonus=0.5)   # doctest: +SKIP
>>> router.matches(*router.scores(embedder.encode([text])[0], text))  # doctest: +SKIP
[Match(record=0, score=1.12, mentioned=True)]
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from editspec.families.plugin.memory import EditMemory, record_keys

_MAX_SUBJECT_WORDS = 12
_CANDIDATES = 32
# The largest cosine similarity of two unit vectors, with room for float32 rounding (which
# stays within 1e-6 of 1 here: both sides are normalised in float32).
MAX_SIMILARITY = 1.0 + 1e-3


_SENTENCE_END = re.compile(r"(?<=[.!?\"”])\s+|\n+")


def focus(text: str) -> str:
    """The last sentence or line of a request (at least three words): what it asks about.

    A completion prompt continues its last sentence, and long prompts often begin with
    unrelated text; scoring that tail too keeps the prefix from drowning the question.

    >>> focus("Category: Villages. Angola belongs to the continent of")
    'Angola belongs to the continent of'
    """
    pieces = [p for p in _SENTENCE_END.split(text) if p and p.strip()]
    tail: list[str] = []
    while pieces and len(" ".join(tail).split()) < 3:
        tail.insert(0, pieces.pop().strip())
    return " ".join(tail) if tail else text.strip()


def normalise(text: str) -> str:
    """Lowercase words without accents or punctuation, single-spaced (for subject mentions).

    >>> normalise("Côte d'Ivoire's capital")
    'cote d ivoire s capital'
    """
    text = unicodedata.normalize("NFKD", text.casefold())
    text = "".join(c for c in text if not unicodedata.combining(c))
    return " ".join(re.findall(r"\w+", text))


@dataclass(frozen=True)
class Match:
    """One edit that applies: its record index, score, and whether its subject was named."""

    record: int
    score: float
    mentioned: bool


class SubjectIndex:
    """Normalised subject -> record indices; finds every subject a text names in O(words)."""

    def __init__(self, subjects: Sequence[str]):
        self.table: dict[str, list[int]] = {}
        for index, subject in enumerate(subjects):
            key = normalise(subject)
            if key:
                self.table.setdefault(key, []).append(index)
        self.longest = min(_MAX_SUBJECT_WORDS, max((len(k.split()) for k in self.table), default=0))

    def mentioned(self, text: str) -> set[int]:
        words = normalise(text).split()
        found: set[int] = set()
        for start in range(len(words)):
            for length in range(1, min(self.longest, len(words) - start) + 1):
                hit = self.table.get(" ".join(words[start:start + length]))
                if hit:
                    found.update(hit)
        return found


class ScopeRouter:
    """Decides which edits of a memory apply to a query text (see the module docstring)."""

    def __init__(self, memory: EditMemory, *, threshold: float, mention_bonus: float):
        self.memory = memory
        self.threshold = float(threshold)
        self.mention_bonus = float(mention_bonus)
        self.subjects = SubjectIndex([r["subject"] for r in memory.records])

    def scores(self, query_vectors: np.ndarray, text: str) -> tuple[np.ndarray, set[int]]:
        """Every record's score for a query (`[n_records]`) and the records it names.

        `query_vectors` embeds the text and, optionally, its `focus` (`[1 or 2, dim]`); the
        better similarity of the two counts.
        """
        from editspec.model.embed import similarities

        scan = similarities(self.memory.embeddings, np.atleast_2d(query_vectors))   # [n_keys, 1 or 2]
        best = self.memory.best_per_record(scan.max(axis=1))                       # [n_records]
        mentioned = self.subjects.mentioned(text)
        if mentioned:
            best = best.copy()
            best[list(mentioned)] += self.mention_bonus
        return best, mentioned

    def can_match(self, text: str) -> bool:
        """Whether any edit could reach the threshold for `text`, whatever its embedding.

        A score is a cosine (at most 1) plus the mention bonus for a named subject, so with a
        threshold above 1 a text that names no edited subject can match nothing: it need not
        be embedded at all.  Exact, not a heuristic: `matches` would find nothing either.

        >>> ScopeRouter(memory, threshold=1.01, mention_bonus=0.5).can_match("What is 2 plus 2?")  # doctest: +SKIP
        False
        """
        if self.threshold <= MAX_SIMILARITY:
            return True
        bonus = max(self.mention_bonus, 0.0) if self.subjects.mentioned(text) else 0.0
        return self.threshold <= MAX_SIMILARITY + bonus

    def matches(self, scores: np.ndarray, mentioned: set[int], limit: int | None = None) -> list[Match]:
        """The records whose score reaches the threshold, best first (at most `limit`)."""
        chosen = np.flatnonzero(scores >= self.threshold)
        # Highest score first; ties broken by record order, so routing is deterministic.
        order = sorted(chosen.tolist(), key=lambda i: (-float(scores[i]), i))
        return [Match(i, float(scores[i]), i in mentioned) for i in order[:limit]]


def query_vectors(embedder, texts: Sequence[str], *, fast: bool = False) -> list[np.ndarray]:
    """For each text, the embeddings of the text and of its `focus` when that differs (one batch).

    `fast` embeds with the embedder's request path (`Embedder.encode_query`), as live requests do.
    """
    tails = [focus(t) for t in texts]
    extra = [i for i, (t, f) in enumerate(zip(texts, tails)) if f != t.strip()]
    encode = embedder.encode_query if fast else embedder.encode
    encoded = encode([*texts, *(tails[i] for i in extra)])
    rows = [encoded[i:i + 1] for i in range(len(texts))]
    for position, i in enumerate(extra):
        rows[i] = np.concatenate([rows[i], encoded[len(texts) + position:len(texts) + position + 1]])
    return rows


# -- calibration ------------------------------------------------------------------------------

def calibration_scores(memory: EditMemory, embedder, *, mention_bonus: float,
                       extra_negatives: Sequence[str] = ()) -> tuple[list[float], list[float]]:
    """Scores of the spec's own positives (leave-one-out keys) and negatives (keep prompts)."""
    index = SubjectIndex([r["subject"] for r in memory.records])
    positives: list[float] = []
    for record_index, record in enumerate(memory.records):
        start = int(memory.starts[record_index])
        keys = record_keys(record)
        if len(keys) < 2:
            continue
        block = memory.embeddings[start:start + len(keys)]            # [keys, dim]
        similarity = block @ block.T
        np.fill_diagonal(similarity, -np.inf)
        for position, key in enumerate(keys):
            bonus = mention_bonus if record_index in index.mentioned(key) else 0.0
            positives.append(float(similarity[position].max()) + bonus)
    negative_texts = list(dict.fromkeys(
        [k["prompt"] for r in memory.records for k in r["keep"]] + list(extra_negatives)))
    negatives: list[float] = []
    if negative_texts and len(memory):
        router = ScopeRouter(memory, threshold=0.0, mention_bonus=mention_bonus)
        for text, vectors in zip(negative_texts, query_vectors(embedder, negative_texts)):
            negatives.append(float(router.scores(vectors, text)[0].max()))
    return positives, negatives


def youden_threshold(positives: Sequence[float], negatives: Sequence[float], default: float) -> float:
    """The cut that best separates positives (route) from negatives (do not route).

    Maximises hit rate minus false-positive rate over cuts between adjacent distinct scores;
    among equally good cuts, the middle of the widest gap.  Falls back to `default` when either
    side is empty.

    >>> youden_threshold([0.9, 0.8], [0.3, 0.5], default=0.7)
    0.65
    """
    if not positives or not negatives:
        return float(default)
    pos, neg = np.sort(np.asarray(positives)), np.sort(np.asarray(negatives))
    values = np.unique(np.concatenate([pos, neg]))
    best_key, best_cut = None, float(default)
    for low, high in zip(values[:-1], values[1:]):
        cut = (low + high) / 2
        hit = (pos >= cut).mean()
        false = (neg >= cut).mean()
        key = (round(hit - false, 12), high - low)
        if best_key is None or key > best_key:
            best_key, best_cut = key, float(cut)
    return round(best_cut, 6)
