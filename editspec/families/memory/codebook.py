"""Keys with deferral radii, for the memory backends (grace, melo): where an edit applies.

A key is a module's activation at one token position of an edit's teacher-forced text: the
last prompt token and each answer token but the last (the positions that predict the answer).
Routing is per position and stateless: a position whose query lies within the radius of its
nearest key uses that key's entry; every other position runs the unedited computation, bit
for bit.  So the same memory works teacher-forced (prompt + answer in one pass), in batches
with padding, and in cached generation, with no prompt length to pass around.

    >>> book = Codebook.empty(dim=64)
    >>> index = book.add(key, label=17, eps_init=3.0)            # doctest: +SKIP
    >>> book.route(queries)                                      # doctest: +SKIP
    tensor([-1, -1, 0])
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch

from editspec.model.hooks import record_inputs, record_outputs, stop_after
from editspec.model.tokens import pad_id, right_pad

Mode = Literal["coverage", "moving_average"]
SLACK = 1e-4  # a radius grown to reach a key reaches a little past it (relative)


def euclidean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact distances [m, n] between rows of `a` [m, d] and `b` [n, d] (slow: for calibration).

    Not through a matrix product, which torch's `cdist` uses past 25 rows: it loses digits,
    most for points close together.
    """
    return torch.cdist(a[None].float(), b[None].float(), compute_mode="donot_use_mm_for_euclid_dist")[0]


def nearest(queries: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query [m, d], the index of its nearest key [n, d] and the exact distance to it.

    The fast matrix-product distances pick the key; the distance is then measured exactly, the
    same way as when a radius was grown to reach a key, so that key is found inside it again.
    """
    queries, keys = queries.float(), keys.float()
    index = torch.cdist(queries[None], keys[None])[0].argmin(dim=1)
    return torch.linalg.vector_norm(queries - keys[index], dim=1), index


@dataclass
class Codebook:
    """Keys [n, d] (float32), their radii [n] and labels [n] (the token each key's position predicts)."""

    keys: torch.Tensor
    eps: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def empty(cls, dim: int) -> "Codebook":
        return cls(torch.zeros(0, dim), torch.zeros(0), torch.zeros(0, dtype=torch.long))

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    def add(self, key: torch.Tensor, label: int, eps_init: float, mode: Mode = "coverage") -> int:
        """Add `key` by GRACE's rules; return the index of the entry it uses.

        Far from every key: a new entry with radius `eps_init`.  Near a key with another label:
        a new entry, and both radii shrink to half their distance.  Near a key with the same
        label: that entry grows to cover it (`coverage`) or moves halfway (`moving_average`).
        The rules: docs/methods/grace.md#the-algorithm-as-implemented.
        """
        key = key.detach().float().cpu()
        if len(self):
            distance, index = nearest(key[None], self.keys)
            d, near = float(distance[0]), int(index[0])
            if d <= eps_init + float(self.eps[near]):
                if int(self.labels[near]) == label:
                    if mode == "moving_average":
                        self.keys[near] = (self.keys[near] + key) / 2
                        d = float(torch.linalg.vector_norm(key - self.keys[near]))
                    self.eps[near] = max(float(self.eps[near]), d * (1 + SLACK))
                    return near
                self.eps[near] = d / 2 - 1e-5
                return self._append(key, label, d / 2)
        return self._append(key, label, eps_init)

    def _append(self, key: torch.Tensor, label: int, eps: float) -> int:
        self.keys = torch.cat([self.keys, key[None]])
        self.eps = torch.cat([self.eps, torch.tensor([eps], dtype=self.eps.dtype)])
        self.labels = torch.cat([self.labels, torch.tensor([label])])
        return len(self) - 1

    def route(self, queries: torch.Tensor) -> torch.Tensor:
        """For queries [..., d]: the index of the nearest key when within its radius, else -1."""
        if not len(self):
            return torch.full(queries.shape[:-1], -1, dtype=torch.long, device=queries.device)
        flat = queries.reshape(-1, queries.shape[-1]).float()
        best, index = nearest(flat, self.keys.to(flat.device))
        inside = best <= self.eps.to(flat.device)[index]
        return torch.where(inside, index, torch.full_like(index, -1)).reshape(queries.shape[:-1])

    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """For safetensors: `keys`, `eps`, `labels` under `prefix`."""
        return {f"{prefix}keys": self.keys.contiguous(), f"{prefix}eps": self.eps.contiguous(),
                f"{prefix}labels": self.labels.contiguous()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str = "") -> "Codebook":
        return cls(tensors[f"{prefix}keys"].float(), tensors[f"{prefix}eps"].float(), tensors[f"{prefix}labels"].long())


@dataclass(frozen=True)
class KeyedText:
    """An edit's teacher-forced text: ids, the positions that predict answer tokens, and those tokens."""

    source: str
    ids: tuple[int, ...]
    positions: tuple[int, ...]
    labels: tuple[int, ...]


def teacher_forced(tokenizer, encoded, ends: Sequence[int | None] | None = None) -> list[KeyedText]:
    """`editspec.families.training.tuning.Encoded` good targets as `KeyedText`s (their key positions and labels).

    `ends` (one per target, or None) is a token to follow the answer: the answer's last token
    becomes a key position too, labelled with it (docs/methods/memory.md#keys-where-an-edit-applies).
    """
    found = []
    for k, e in enumerate(encoded):
        start = len(e.head) - 1
        end = ends[k] if ends is not None else None
        labels = e.answer + ((end,) if end is not None else ())
        found.append(KeyedText(e.target.source, e.head + e.answer, tuple(range(start, start + len(labels))), labels))
    return found


@torch.no_grad()
def activations(model, tokenizer, path: str, sequences: Sequence[Sequence[int]], *,
                where: Literal["input", "output"] = "input", batch_size: int = 16) -> list[torch.Tensor]:
    """The activation at `path` ([len, d] per sequence, float32, CPU): the module's input or output.

    The forward pass stops at `path`: the layers above it and the output head never run.
    """
    side = 0 if where == "input" else 1
    return [pair[side] for pair in activation_pairs(model, tokenizer, path, sequences, batch_size=batch_size)]


def activation_pairs(model, tokenizer, path: str, sequences: Sequence[Sequence[int]], *,
                     batch_size: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Module `path`'s input and output ([len, d_in], [len, d_out] per sequence, float32, CPU) from
    one forward pass, which stops at `path`."""
    device = model.get_input_embeddings().weight.device
    found: list[tuple[torch.Tensor, torch.Tensor]] = []
    for start in range(0, len(sequences), batch_size):
        rows = [list(s) for s in sequences[start:start + batch_size]]
        ids, mask = right_pad(rows, pad_id(tokenizer))
        with record_inputs(model, [path]) as seen_in, record_outputs(model, [path]) as seen_out, stop_after(model, path):
            model(input_ids=ids.to(device), attention_mask=mask.to(device))
        inputs, outputs = seen_in[path].float().cpu(), seen_out[path].float().cpu()
        found += [(inputs[r, : len(row)], outputs[r, : len(row)]) for r, row in enumerate(rows)]
    return found


SAME_POINT = 1e-4  # a reference row this close (relative to the key's norm) is the key itself


def nearest_distances(keys: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """For each key [n, d], its distance to the nearest reference row [m, d] (inf when none).

    Rows at the key itself are skipped: reference text that continues an edit's own prompt
    (the old fact, say) has the key's activation there, and is what the edit is meant to change.
    """
    if references.numel() == 0:
        return torch.full((keys.shape[0],), float("inf"))
    distances = euclidean(keys, references)
    same = distances <= SAME_POINT * torch.linalg.vector_norm(keys.float(), dim=1, keepdim=True)
    return distances.masked_fill(same, float("inf")).min(dim=1).values
