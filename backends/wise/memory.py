"""WISE's side memories: deltas of one value projection, each with a routing threshold.

A memory j is ``ΔW_j`` [d_v, d_k]; at a token whose projection input is a, its activation
score is ``‖ΔW_j a‖ / ‖W a‖`` (how much it would change the projection's output, relative to
the output).  Routing is per position and stateless: the memory with the highest score serves
the position when that score passes its threshold, adding ``ΔW_j a``; every other position
runs the unedited computation bit for bit.

    >>> memory = SideMemory.empty(d_v=576, d_k=1536)
    >>> memory.add(delta, threshold=0.4, edits=100)        # doctest: +SKIP
    >>> memory.route(inputs, outputs)                      # doctest: +SKIP
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

import torch

from editspec.errors import EditspecError
from editspec.model.hooks import _hidden, _with_hidden

TINY = 1e-12


@dataclass
class SideMemory:
    """Deltas [m, d_v, d_k] (float32), thresholds [m], and how many edits each holds [m].

    Anchors are the projection inputs [a, d_k] (and output norms [a]) at the answer positions
    of the edits a memory holds, with the memory they belong to [a]: a continued memory keeps
    them routing while it learns new edits.  At most `edits_per_memory` edits' worth per memory.
    """

    deltas: torch.Tensor
    thresholds: torch.Tensor
    edits: torch.Tensor
    anchors: torch.Tensor
    anchor_norms: torch.Tensor
    anchor_memory: torch.Tensor

    @classmethod
    def empty(cls, d_v: int, d_k: int) -> "SideMemory":
        long = torch.zeros(0, dtype=torch.long)
        return cls(torch.zeros(0, d_v, d_k), torch.zeros(0), long, torch.zeros(0, d_k), torch.zeros(0), long.clone())

    def anchors_of(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory `index`'s anchor inputs [a, d_k] and output norms [a]."""
        mine = self.anchor_memory == index
        return self.anchors[mine], self.anchor_norms[mine]

    def add_anchors(self, index: int, inputs: torch.Tensor, outputs: torch.Tensor) -> None:
        self.anchors = torch.cat([self.anchors, inputs.float()])
        self.anchor_norms = torch.cat([self.anchor_norms, outputs.float().norm(dim=-1)])
        self.anchor_memory = torch.cat([self.anchor_memory, torch.full((len(inputs),), index, dtype=torch.long)])

    def __len__(self) -> int:
        return int(self.deltas.shape[0])

    def put(self, index: int, delta: torch.Tensor, threshold: float, edits: int) -> None:
        """Set memory `index` (or append one when `index` == len)."""
        delta = delta.detach().float().cpu()
        if index == len(self):
            self.deltas = torch.cat([self.deltas, delta[None]])
            self.thresholds = torch.cat([self.thresholds, torch.tensor([threshold])])
            self.edits = torch.cat([self.edits, torch.tensor([edits])])
        else:
            self.deltas[index], self.thresholds[index], self.edits[index] = delta, threshold, edits

    def route(self, inputs: torch.Tensor, outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For inputs [..., d_k] and the unedited outputs [..., d_v]: the serving memory (-1: none) and its update."""
        flat = inputs.reshape(-1, inputs.shape[-1]).float()
        base = outputs.reshape(-1, outputs.shape[-1]).float()
        updates = torch.einsum("nk,mvk->mnv", flat, self.deltas.to(flat.device))  # [m, n, d_v]
        scores = updates.norm(dim=-1) / base.norm(dim=-1).clamp(min=TINY)  # [m, n]
        best, index = scores.max(dim=0)
        inside = best > self.thresholds.to(flat.device)[index]
        chosen = updates.gather(0, index.view(1, -1, 1).expand(1, -1, updates.shape[-1]))[0]
        index = torch.where(inside, index, torch.full_like(index, -1))
        return index.reshape(inputs.shape[:-1]), chosen.reshape(outputs.shape)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"deltas": self.deltas.contiguous(), "thresholds": self.thresholds.contiguous(),
                "edits": self.edits.contiguous(), "anchors": self.anchors.contiguous(),
                "anchor_norms": self.anchor_norms.contiguous(), "anchor_memory": self.anchor_memory.contiguous()}


def scores(delta: torch.Tensor, inputs: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """Activation scores ``‖ΔW a‖ / ‖W a‖`` of one delta at rows of inputs [n, d_k] / outputs [n, d_v]
    (or their norms [n])."""
    if not len(inputs):
        return torch.zeros(0)
    norms = outputs if outputs.dim() == 1 else outputs.norm(dim=-1)
    return (inputs @ delta.T).norm(dim=-1) / norms.clamp(min=TINY)


def routing_hook(memory: SideMemory):
    """A forward hook on the value projection: routed positions get their memory's update."""
    def hook(module, args, output):
        if not len(memory):
            return output
        hidden = _hidden(output)
        index, update = memory.route(args[0], hidden)
        hit = index >= 0
        if not bool(hit.any()):
            return output  # the unedited output object itself
        return _with_hidden(output, torch.where(hit[..., None], hidden + update.to(hidden.dtype), hidden))

    return hook


def ties_merge(changes: list[torch.Tensor], density: float) -> torch.Tensor:
    """TIES merging of shard changes: trim each to its largest `density` fraction, elect a sign per
    entry by total mass, average the entries that agree with it (zeros do not vote)."""
    if len(changes) == 1:
        return changes[0]
    trimmed = []
    for change in changes:
        keep = max(1, int(round(density * change.numel())))
        cut = change.abs().flatten().kthvalue(change.numel() - keep + 1).values if keep < change.numel() else 0.0
        trimmed.append(torch.where(change.abs() >= cut, change, torch.zeros_like(change)))
    stacked = torch.stack(trimmed)
    sign = torch.sign(stacked.sum(0))
    agree = (torch.sign(stacked) == sign) & (stacked != 0)
    count = agree.sum(0).clamp(min=1)
    return (stacked * agree).sum(0) / count


def best_threshold(positive: torch.Tensor, negative: torch.Tensor | Sequence[torch.Tensor],
                   leak_cost: float = 10.0) -> float:
    """The threshold that best separates scores that should route (`positive`) from those that should
    not: the most ``routed positives − leak_cost × routed negatives`` (as fractions), ties to the
    higher threshold (locality first).  `negative` may be several groups: each group's routed
    fraction counts on its own (a small group of hard negatives is not lost among many easy ones)."""
    groups = [g for g in ([negative] if isinstance(negative, torch.Tensor) else negative) if len(g)]
    values = torch.cat([positive, *groups]).float().sort().values
    candidates = torch.cat([values[:1] - TINY, (values[1:] + values[:-1]) / 2, values[-1:] + TINY])
    pos = (positive[None, :] > candidates[:, None]).float().mean(1) if len(positive) else torch.zeros(len(candidates))
    leak = torch.zeros(len(candidates))
    for group in groups:
        leak += (group[None, :] > candidates[:, None]).float().mean(1)
    accuracy = pos - leak_cost * leak
    best = accuracy.max()
    return float(candidates[(accuracy == best).nonzero().max()])


def save_memory(path, memory: SideMemory, module: str) -> None:
    from safetensors.torch import save

    meta = json.dumps({"format": "editspec.wise", "format_version": "1", "module": module}, sort_keys=True)
    path.write_bytes(save(dict(sorted(memory.tensors().items())), metadata={"editspec": meta}))


def load_memory(path) -> tuple[SideMemory, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("editspec", "{}"))
        if meta.get("format") != "editspec.wise":
            raise EditspecError(f"{path} is not an editspec WISE memory")
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    return SideMemory(tensors["deltas"].float(), tensors["thresholds"].float(), tensors["edits"].long(),
                      tensors["anchors"].float(), tensors["anchor_norms"].float(), tensors["anchor_memory"].long()), meta["module"]
