"""ROME's update math: k*, v*, and the rank-one insertion (R-ROME form by default).

Example::

    result = rome_deltas(model, tokenizer, [EditRequest("The capital of {} is", "France", "Rome")],
                         RomeConfig(layer=5), stats=lambda layer: C[layer])
    handle = apply_deltas(model, result.deltas)
"""
from __future__ import annotations

from typing import Sequence

import torch

from editspec.deltas import Delta, apply_deltas
from editspec.layout import layout_for, module_at, value_bias, value_weight
from editspec.locate import (
    EditRequest, EditResult, StatsSource, average_keys, flatten_groups,
    optimise_targets, prepare_requests, second_moment_for, select_layers, template_keys, templates_for,
)
from editspec.tokens import pad_id

from .config import RomeConfig



def rank_one_update(
    residual: torch.Tensor, key: torch.Tensor, cov: torch.Tensor | None, direction: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Factors of ``Δ = r uᵀ / (uᵀ k)``, ``u = C⁻¹k*``, so that ``Δ k = r``; C None means identity.

    `direction` is k* (defaults to `key`); ROME's original form uses the averaged k* for u but the
    clean-prompt key in the denominator.  Returns ``(left [d_v, 1], right [1, d_k], uᵀk)`` with
    u normalised, so the denominator is comparable across facts (small values warn of blow-ups).
    """
    direction = key if direction is None else direction
    u = direction if cov is None else torch.linalg.solve(cov, direction)
    u = u / u.norm()
    denom = float(u @ key)
    return residual.unsqueeze(1), (u / denom).unsqueeze(0), denom


def rome_deltas(
    model, tokenizer, requests: Sequence[EditRequest], config: RomeConfig = RomeConfig(), *,
    stats: StatsSource = None, templates: Sequence[Sequence[str]] | None = None,
) -> EditResult:
    """One rank-one delta per request (inserted one after another); the model is left unchanged.

    `stats` gives C = E[kkᵀ] per layer (mapping or callable); None uses the identity.
    `templates` are context-template groups (first group ``["{}"]``); None samples them.
    """
    layout = layout_for(model)
    pad = pad_id(tokenizer)
    groups = flatten_groups(templates_for(model, tokenizer, templates, config.context_template_counts, config.template_seed))
    prepared = prepare_requests(tokenizer, requests, groups)
    n = len(prepared)
    if config.layer == "auto":
        layers = select_layers(model, layout, prepared, config.auto_layers, pad=pad, stats=stats)
    else:
        layers = [config.layer] * n
    targets = optimise_targets(model, [layout.mlp_out_at(l) for l in layers], prepared, config.optim(), pad=pad)
    distinct = sorted(set(layers))
    # Keys on the unedited model fix the absolute targets v* = W₀k̄ + b + δ (R-ROME).
    keys0, _ = template_keys(model, layout, prepared, distinct, pad=pad)
    result = EditResult([])
    handles = []
    try:
        for layer in distinct:
            members = [i for i in range(n) if layers[i] == layer]
            proj = module_at(model, layout.mlp_out_at(layer))
            keys = keys0[layer]
            if layer != distinct[0]:  # lower layers are edited now: keys moved
                keys, _ = template_keys(model, layout, prepared, [layer], pad=pad)
                keys = keys[layer]
            w = value_weight(proj)
            factor_dtype = torch.float64 if w.dtype == torch.float64 else torch.float32
            bias = value_bias(proj)
            bias = torch.zeros(w.shape[0], dtype=torch.float64) if bias is None else bias.detach().to("cpu", torch.float64)
            w0 = w.detach().to("cpu", torch.float64)
            cov = second_moment_for(stats, layer, w.shape[1], config.mom2_ridge)
            for i in members:
                k_bar = average_keys(keys[i], prepared[i].group)
                if config.variant == "r-rome":
                    key = k_bar
                    target = w0 @ average_keys(keys0[layer][i], prepared[i].group) + bias + targets.delta[i]
                else:
                    key = keys[i][0]  # the bare prompt's key k_e
                    target = targets.value[i]  # v_init + δ, v_init = f(k_e) before editing
                w_now = value_weight(proj).detach().to("cpu", torch.float64)
                residual = target - (w_now @ key + bias)
                left, right, denom = rank_one_update(residual, key, cov, direction=k_bar)
                delta = Delta(layout.mlp_out_at(layer), left.to(factor_dtype), right.to(factor_dtype))
                handles.append(apply_deltas(model, [delta]))
                result.deltas.append(delta)
                result.facts.append({
                    "index": i, "subject": prepared[i].request.subject, "layer": layer, "denominator": denom,
                    "delta_norm": float(delta.dense().norm()), "loss": float(targets.loss[i]),
                    "nll": float(targets.nll[i]), "steps": int(targets.steps[i]) + 1,
                    "key": key, "target": target,
                })
    finally:
        for h in reversed(handles):
            h.revert()
    return result
