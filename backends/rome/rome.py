"""ROME's update math: k*, v*, and the rank-one insertion (R-ROME form by default).

Example::

    result = rome_deltas(model, tokenizer, [EditRequest("The capital of {} is", "France", "Rome")],
                         RomeConfig(layer=5), stats=lambda layer: C[layer])
    handle = apply_deltas(model, result.deltas)
"""
from __future__ import annotations

from typing import Sequence

import torch

from editspec.model.chat import chat_enabled
from editspec.model.deltas import Delta, apply_deltas
from editspec.model.layout import layout_for, module_at, value_bias, value_weight
from editspec.families.locate import (
    EditRequest, EditResult, PreparedRequest, StatsSource, average_keys, collect_at, flatten_groups, keys_at,
    optimise_targets, prepare_requests, second_moment_for, select_layers, template_keys, templates_for,
)
from editspec.model.tokens import pad_id

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


def delivered_scales(
    model, layout, prepared: Sequence[PreparedRequest], layers: Sequence[int], keys0: dict, covs: dict,
    variant: str, *, pad: int,
) -> list[list[float]]:
    """Per request, what multiple of δ the rank-one update will add in each optimisation row.

    The update ``Δ = r uᵀ/(uᵀk)`` (u = C⁻¹k̄) adds ``δ·uᵀk_t/uᵀk`` at a prompt whose key is
    k_t, where k is k̄ (R-ROME) or the bare prompt's key (original).  Rows: every template,
    then the KL prompt.  Keys are read on the unedited model.
    """
    kl_keys = {}
    for layer in sorted(set(layers)):
        members = [i for i, l in enumerate(layers) if l == layer]
        path = layout.mlp_out_at(layer)
        got = collect_at(model, [prepared[i].kl_row[:prepared[i].kl_index + 1] for i in members],
                         [prepared[i].kl_index for i in members], pad=pad, inputs=[path], stop=path)[path]
        kl_keys.update({i: got[j] for j, i in enumerate(members)})
    scales = []
    for i, (prep, layer) in enumerate(zip(prepared, layers)):
        rows = keys0[layer][i]                                      # [templates, d_k]
        k_bar = average_keys(rows, prep.group)
        cov = covs[layer]
        u = k_bar if cov is None else torch.linalg.solve(cov, k_bar)
        denominator = u @ (k_bar if variant == "r-rome" else rows[0])
        scales.append([*(rows @ u / denominator).tolist(), float(kl_keys[i] @ u / denominator)])
    return scales


def held_moment(cov: torch.Tensor | None, held: torch.Tensor, weight: float) -> torch.Tensor | None:
    """C + weight·PᵀP: the metric whose rank-one update also leaves the held keys P [m, d_k] alone.

    ROME's Δ = r uᵀ/(uᵀk), u = C⁻¹k, is the smallest update in C's metric that maps k to its
    target; with the held keys added to C it is the smallest that also moves their outputs
    little (MEMIT's least squares with the keys held, for one edit, in the limit of an exact fit).
    C None is the identity.
    """
    if held is None or not held.numel():
        return cov
    held = held.to(torch.float64)
    base = torch.eye(held.shape[1], dtype=torch.float64) if cov is None else cov.to(torch.float64)
    return base + weight * held.T @ held


def rome_deltas(
    model, tokenizer, requests: Sequence[EditRequest], config: RomeConfig = RomeConfig(), *,
    stats: StatsSource = None, templates: Sequence[Sequence[str]] | None = None,
    keep: Sequence[tuple] | None = None, keep_share: float = 1.0,
) -> EditResult:
    """One rank-one delta per request (inserted one after another); the model is left unchanged.

    `stats` gives C = E[kkᵀ] per layer (mapping or callable); None uses the identity.
    `templates` are context-template groups (first group ``["{}"]``); None samples them.
    `keep` are ``(ids, positions)`` texts (`keep_texts`) whose keys, read on the unedited model,
    join C with `keep_share`·`config.keep_weight` each (`held_moment`, `keep_share`), so the
    updates leave them alone.
    """
    layout = layout_for(model)
    pad = pad_id(tokenizer)
    groups = flatten_groups(templates_for(model, tokenizer, templates, config.context_template_counts, config.template_seed))
    prepared = prepare_requests(tokenizer, requests, groups, chat=chat_enabled(tokenizer, config.chat),
                                answer_end=config.answer_end)
    n = len(prepared)
    if config.layer == "auto":
        layers = select_layers(model, layout, prepared, config.auto_layers, pad=pad, stats=stats)
    else:
        layers = [config.layer] * n
    distinct = sorted(set(layers))
    # Keys on the unedited model fix the absolute targets v* = W₀k̄ + b + δ (R-ROME).
    keys0, _ = template_keys(model, layout, prepared, distinct, pad=pad)
    covs = {layer: second_moment_for(stats, layer, keys0[layer][0].shape[1], config.mom2_ridge) for layer in distinct}
    if keep:
        covs = {layer: held_moment(cov, keys_at(model, layout, keep, layer, pad=pad),
                                        keep_share * config.keep_weight)
                for layer, cov in covs.items()}
    scales = None
    if config.delta_as_delivered:
        scales = delivered_scales(model, layout, prepared, layers, keys0, covs, config.variant, pad=pad)
    targets = optimise_targets(model, [layout.mlp_out_at(l) for l in layers], prepared, config.optim(), pad=pad,
                               row_scales=scales)
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
            cov = covs[layer]
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
