"""The edit memory of a black-box plugin: one record per edit, its key prompts and their embeddings.

A record holds everything a prompt template may need (the new fact as one line, the prompts
that should now give the new object, the keep facts with their answers).  Keys are the
prompts that identify an edit's scope (relation prompts, paraphrases, questions, scope
prompts); they are embedded once at compile time and stored contiguously per record, so the
router can take the best key of each edit with one `np.maximum.reduceat`.

>>> memory = EditMemory.from_edits(spec.edits, load_embedder())   # doctest: +SKIP
>>> memory.save(plugin_dir); EditMemory.load(plugin_dir).records[0]["target"]  # doctest: +SKIP
'Linda Yaccarino'
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

MEMORY_FILE = "memory.jsonl"
EMBEDDINGS_FILE = "embeddings.safetensors"


def one_line(text: str) -> str:
    """Whitespace collapsed to single spaces: a fact can never start a new prompt section."""
    return re.sub(r"\s+", " ", text).strip()


def edit_record(edit) -> dict:
    """The memory record of an IR `Edit` (plain JSON data).

    >>> edit_record(edit)["fact"]                                # doctest: +SKIP
    'The CEO of Twitter is Linda Yaccarino'
    """
    lead = edit.prompts[0] if edit.prompts else (edit.questions[0] if edit.questions else edit.subject)
    return {
        "id": edit.id,
        "subject": edit.subject,
        "relation": edit.relation,
        "target": edit.target,
        "aliases": list(edit.aliases),
        "old": edit.old,
        "prompt": one_line(lead),
        "fact": one_line(f"{lead} {edit.target}"),
        "updates": [one_line(p) for p in (*edit.prompts[1:], *edit.paraphrases, *edit.scope)],
        "questions": [one_line(q) for q in edit.questions],
        "keep": [{"prompt": one_line(p), "answer": one_line(fact.answer)}
                 for fact in edit.keep for p in fact.prompts],
    }


def record_keys(record: dict) -> list[str]:
    """The prompts that identify a record's scope, without repeats, the lead prompt first."""
    return list(dict.fromkeys([record["prompt"], *record["updates"], *record["questions"]]))


@dataclass
class EditMemory:
    """Records, their key texts and key embeddings (`[n_keys, dim]`, unit rows).

    Record `i` owns keys `starts[i]` to `starts[i + 1]` (exclusive; the last runs to the end).
    """

    records: list[dict]
    keys: list[str]
    owners: np.ndarray       # [n_keys] record index of each key
    starts: np.ndarray       # [n_records] first key of each record
    embeddings: np.ndarray   # [n_keys, dim] float32

    @classmethod
    def from_records(cls, records: Sequence[dict], embedder) -> "EditMemory":
        keys, owners, starts = [], [], []
        for index, record in enumerate(records):
            starts.append(len(keys))
            for key in record_keys(record):
                keys.append(key)
                owners.append(index)
        return cls(list(records), keys, np.asarray(owners, dtype=np.int64), np.asarray(starts, dtype=np.int64),
                   embedder.encode(keys))

    @classmethod
    def from_edits(cls, edits: Iterable, embedder) -> "EditMemory":
        return cls.from_records([edit_record(e) for e in edits], embedder)

    def __len__(self) -> int:
        return len(self.records)

    def best_per_record(self, similarities: np.ndarray) -> np.ndarray:
        """The highest key similarity of every record (`[n_records]`)."""
        if not len(self.records):
            return np.zeros(0, dtype=np.float32)
        return np.maximum.reduceat(similarities, self.starts)

    def save(self, folder: Path) -> list[str]:
        """Write `memory.jsonl` and `embeddings.safetensors` into `folder`; the names written."""
        from safetensors.numpy import save_file

        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / MEMORY_FILE, "w", encoding="utf-8", newline="\n") as handle:
            for record in self.records:
                handle.write(json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n")
        save_file({"keys": self.embeddings, "owners": self.owners, "starts": self.starts},
                  str(folder / EMBEDDINGS_FILE), metadata={"keys": json.dumps(self.keys, ensure_ascii=False)})
        return [MEMORY_FILE, EMBEDDINGS_FILE]

    @classmethod
    def load(cls, folder: Path) -> "EditMemory":
        from safetensors import safe_open
        from safetensors.numpy import load_file

        records = [json.loads(line) for line in (folder / MEMORY_FILE).read_text(encoding="utf-8").splitlines()
                   if line.strip()]
        tensors = load_file(str(folder / EMBEDDINGS_FILE))
        with safe_open(str(folder / EMBEDDINGS_FILE), framework="numpy") as handle:
            keys = json.loads(handle.metadata()["keys"])
        return cls(records, keys, tensors["owners"], tensors["starts"], tensors["keys"])
