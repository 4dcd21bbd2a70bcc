"""`layer auto`: choose the edited layer per fact, WilKE-style.

The method: docs/methods/locate.md#choosing-the-layer-per-fact-layer-auto.

[heuristic] The rank-one update that moves a layer's value by δ costs
``‖Δ‖_F = ‖δ‖·‖C⁻¹k‖ / (kᵀC⁻¹k)`` (``‖δ‖/‖k‖`` with C = I).  To first order, the δ that
lowers the target's loss by a fixed amount has norm proportional to ``1/‖g‖``, where g is the
loss gradient at that layer's value at the subject token.  So the predicted update size is
``‖C⁻¹k‖ / (‖g‖·kᵀC⁻¹k)`` and we pick the candidate layer where it is smallest: the layer
whose key pattern matches the fact most strongly.  One forward and one backward pass over the
bare prompts score every candidate layer at once.
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import torch

from editspec.model.hooks import add_to_output, gather_positions, record_inputs
from editspec.model.layout import ModelLayout
from editspec.model.tokens import right_pad

from .common import StatsSource, second_moment_for
from .requests import PreparedRequest
from .targets import frozen


def layer_scores(
    model, layout: ModelLayout, prepared: Sequence[PreparedRequest], candidates: Sequence[int], *,
    pad: int, stats: StatsSource = None,
) -> torch.Tensor:
    """Predicted rank-one update size per (request, candidate layer): [n, len(candidates)]; lower is better."""
    device = next(model.parameters()).device
    seqs = [p.rows[0] for p in prepared]  # bare prompt + target[:-1]
    ids, mask = right_pad(seqs, pad)
    subject = torch.tensor([p.subject_index[0] for p in prepared])
    width = model.config.get_text_config().hidden_size
    paths = [layout.mlp_out_at(l) for l in candidates]
    probes = [torch.zeros(len(seqs), width, device=device, requires_grad=True) for _ in candidates]
    with frozen(model), record_inputs(model, paths) as keys, torch.enable_grad():
        with contextlib.ExitStack() as stack:
            for path, probe in zip(paths, probes):  # zero vectors: their gradients are g
                stack.enter_context(add_to_output(model, path, probe, subject))
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits  # [n, T, vocab]
        logp = torch.log_softmax(logits.float(), -1)
        loss = logits.new_zeros(())
        for i, p in enumerate(prepared):
            for j, t in enumerate(p.target_ids):
                loss = loss - logp[i, p.prompt_len[0] - 1 + j, t] / len(p.target_ids)
        loss.backward()
    scores = torch.empty(len(seqs), len(candidates), dtype=torch.float64)
    for c, (layer, path, probe) in enumerate(zip(candidates, paths, probes)):
        k = gather_positions(keys[path].detach(), subject).to("cpu", torch.float64)  # [n, d_k]
        g = probe.grad.to("cpu", torch.float64).norm(dim=-1)  # [n]
        cov = second_moment_for(stats, layer, k.shape[-1])
        u = k if cov is None else torch.linalg.solve(cov, k.T).T  # C⁻¹k
        scores[:, c] = u.norm(dim=-1) / ((u * k).sum(-1) * g).clamp(min=1e-30)
    return scores


def select_layers(
    model, layout: ModelLayout, prepared: Sequence[PreparedRequest], candidates: Sequence[int], *,
    pad: int, stats: StatsSource = None,
) -> list[int]:
    """The best candidate layer for each request (see the module docstring)."""
    scores = layer_scores(model, layout, prepared, candidates, pad=pad, stats=stats)
    return [int(candidates[j]) for j in scores.argmin(dim=1).tolist()]
