"""Which vectors sense fine-tuning trains: Backpack senses by contextualization weight, or MLP
value vectors by attribution.  Both pick the top `k` per target and return the union, in order.

    >>> backpack_senses(model, encoded, anchors, k=8, background_weight=1000)   # doctest: +SKIP
    [(1234, 3), (1234, 11), ...]          # (word id, sense index)
    >>> value_vectors(model, encoded, ["model.layers.4.mlp.down_proj"], k=8)   # doctest: +SKIP
    {"model.layers.4.mlp.down_proj": [17, 905]}
"""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import torch

from editspec.model.layout import module_at
from editspec.families.training.backend import only_trainable


def _answer_positions(e) -> list[int]:
    return list(range(len(e.head) - 1, len(e.head) + len(e.answer) - 1))


@torch.no_grad()
def _received(model, ids: torch.Tensor, positions: Sequence[int] | None, mask: torch.Tensor | None = None):
    """Per (word, sense): the summed α it receives from `positions` (all valid positions if None), and how many."""
    alpha = model(input_ids=ids, attention_mask=mask).contextualization.float()  # [b, nv, s, s]
    totals: dict[tuple[int, int], float] = defaultdict(float)
    counts = 0
    for b in range(ids.shape[0]):
        length = int(mask[b].sum()) if mask is not None else ids.shape[1]
        rows = positions if positions is not None else range(length)
        counts += len(rows)
        received = alpha[b][:, list(rows), :length].sum(dim=1)  # [nv, s]
        for sense in range(received.shape[0]):
            for j in range(length):
                totals[(int(ids[b, j]), sense)] += float(received[sense, j])
    return totals, counts


def backpack_senses(model, encoded, anchors, *, k: int, background_weight: float) -> list[tuple[int, int]]:
    """The top-`k` (word, sense) pairs per target: α received while predicting the answer, minus
    `background_weight` × the mean α the pair receives per position of the anchor text."""
    background: dict[tuple[int, int], float] = defaultdict(float)
    if anchors is not None and background_weight > 0:
        totals, count = _received(model, anchors.ids, None, anchors.mask)
        background = defaultdict(float, {key: value / max(count, 1) for key, value in totals.items()})
    chosen: list[tuple[int, int]] = []
    for e in encoded:
        ids = torch.tensor([list(e.head + e.answer)])
        importance, _ = _received(model, ids, _answer_positions(e))
        ranked = sorted(importance, key=lambda key: (-(importance[key] - background_weight * background[key]), key))
        chosen += [key for key in ranked[:k] if key not in chosen]
    return chosen


def value_vectors(model, encoded, paths: Sequence[str], *, k: int) -> dict[str, list[int]]:
    """The top-`k` (module, neuron) pairs per target by |activation × gradient| summed over the
    answer positions, for the value projections at `paths`."""
    seen: dict[str, torch.Tensor] = {}

    def record(path):
        def pre_hook(module, args):
            args[0].retain_grad()
            seen[path] = args[0]
        return pre_hook

    def start_graph(module, args, output):  # activations need grad even when no weight does
        return output.detach().requires_grad_()

    handles = [module_at(model, p).register_forward_pre_hook(record(p)) for p in paths]
    handles.append(model.get_input_embeddings().register_forward_hook(start_graph))
    chosen: dict[str, list[int]] = {p: [] for p in paths}
    try:
        with torch.enable_grad(), only_trainable(model, []):  # gradients for activations only
            for e in encoded:
                ids = torch.tensor([list(e.head + e.answer)], device=model.get_input_embeddings().weight.device)
                logp = torch.log_softmax(model(input_ids=ids).logits.float(), dim=-1)[0]
                positions = _answer_positions(e)
                nll = -logp[positions].gather(1, torch.tensor(e.answer, device=logp.device)[:, None]).sum()
                nll.backward()
                scores = [(seen[p][0, positions] * seen[p].grad[0, positions]).abs().sum(0).float().cpu() for p in paths]
                flat = torch.cat(scores)
                widths = [s.numel() for s in scores]
                for index in flat.topk(min(k, flat.numel())).indices.tolist():
                    layer = next(i for i in range(len(widths)) if index < sum(widths[: i + 1]))
                    neuron = index - sum(widths[:layer])
                    if neuron not in chosen[paths[layer]]:
                        chosen[paths[layer]].append(neuron)
    finally:
        for handle in handles:
            handle.remove()
    return {p: sorted(n) for p, n in chosen.items() if n}
