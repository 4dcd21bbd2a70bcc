"""MEMIT's update math: batched residual targets z, then a λC-regularised solve per layer.

Example::

    result = memit_deltas(model, tokenizer, requests, MemitConfig(layers=(4, 5, 6, 7, 8)),
                          stats=lambda layer: second_moment(model, tokenizer, layer))
"""
from __future__ import annotations

from typing import Sequence

import torch

from editspec.model.chat import chat_enabled
from editspec.model.layout import layout_for
from editspec.families.locate import (
    EditRequest, EditResult, StatsSource, keys_at, least_squares_update, prepare_requests, revert_all,
    round_settings, second_moment_for, spread_in_rounds, templates_for,
)
from editspec.model.tokens import pad_id

from .config import MemitConfig, default_layers


def memit_update(keys: torch.Tensor, residual: torch.Tensor, cov: torch.Tensor | None, weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors of ``Δ = Rsd·Kᵀ·(λC + K Kᵀ)⁻¹`` (math order, K as columns); C None means identity.

    `keys` [n, d_k] and `residual` [n, d_v] hold one row per fact.  Returns
    ``(left = Rsdᵀ [d_v, n], right = ((λC + KKᵀ)⁻¹ K)ᵀ [n, d_k])`` in float64: the solution of
    ``Δ (λC + KKᵀ) = Rsd Kᵀ``, the least-squares edit that keeps λ·C's keys in place.
    """
    return least_squares_update(keys, residual, cov, weight)


def memit_solver(stats: StatsSource, config: MemitConfig, preserved=None, keep_share: float = 1.0):
    """The per-layer solve `spread_over_layers` calls: memit's λC update, each layer's C read once.

    `preserved(layer)`, when given, returns keys [m, d_k] whose output the update must leave alone
    (measured when the layer is solved, on the model as edited so far); each counts
    `keep_share`·`config.keep_weight` tokens of C.  With `config.keep_fit`, that weight is quartered
    until the held update delivers at least `keep_fit` of what the unheld one delivers at the edit
    keys (`delivered`).  The weight each call used is appended to the solve's `weights`.
    """
    start = keep_share * config.keep_weight
    covs = {}

    def solve(layer, keys, residual):
        if layer not in covs:
            covs[layer] = second_moment_for(stats, layer, keys.shape[1], config.mom2_ridge)
        held = preserved(layer) if preserved is not None else None
        if held is None:
            return least_squares_update(keys, residual, covs[layer], config.mom2_update_weight)

        def held_update(weight):
            return least_squares_update(keys, residual, covs[layer], config.mom2_update_weight, held * weight ** 0.5)

        weight, update = start, held_update(start)
        if config.keep_fit is not None:
            reach = delivered(least_squares_update(keys, residual, covs[layer], config.mom2_update_weight), keys, residual)
            while delivered(update, keys, residual) < config.keep_fit * reach and weight > start * MIN_BACKOFF:
                weight /= 4
                update = held_update(weight)
        solve.weights.append(weight)
        return update

    solve.weights = []
    return solve


# The held weight backs off at most to this fraction of its start (then the keys are barely held).
MIN_BACKOFF = 1e-3


def delivered(update: tuple[torch.Tensor, torch.Tensor], keys: torch.Tensor, residual: torch.Tensor) -> float:
    """The share of `residual` [n, d_v] that the update's factors deliver at `keys` [n, d_k]: ⟨ΔKᵀ, R⟩ / ‖R‖²."""
    left, right = update
    out = left @ (right @ keys.to(torch.float64).T)  # [d_v, n]
    r = residual.to(torch.float64).T
    return float((out * r).sum() / (r * r).sum())


def memit_deltas(
    model, tokenizer, requests: Sequence[EditRequest], config: MemitConfig = MemitConfig(), *,
    stats: StatsSource = None, templates: Sequence[Sequence[str]] | None = None,
    keep: Sequence[tuple] | None = None, keep_share: float = 1.0,
) -> EditResult:
    """One delta per edited layer and round (rank ≤ number of facts each); the model is left unchanged.

    With ``config.passes`` > 1 the targets are optimised again on the model the earlier rounds
    edited and solved again, so each fact also makes up for what the other edits did at its
    prompts (docs/methods/memit.md#rounds-passes).

    `stats` gives C = E[kkᵀ] per layer (mapping or callable), computed on the unedited model;
    None uses the identity.  `templates` are context-template groups; None samples them.
    `keep` are ``(ids, positions)`` texts (`keep_texts`) whose keys every layer's solve holds in
    place, `keep_share`·`config.keep_weight` tokens each (`keep_share`).
    """
    layout = layout_for(model)
    pad = pad_id(tokenizer)
    layers = config.layers or default_layers(layout.num_layers(model))
    groups = templates_for(model, tokenizer, templates, config.context_template_counts, config.template_seed)
    prepared = prepare_requests(tokenizer, requests, groups, chat=chat_enabled(tokenizer, config.chat),
                                answer_end=config.answer_end)
    held = (lambda layer: keys_at(model, layout, keep, layer, pad=pad)) if keep else None
    solve = memit_solver(stats, config, held, keep_share)

    def with_held_weights(stage_logs):
        """The held weight each layer's solve used (backed off with `keep_fit`), in the round's logs."""
        weights, solve.weights[:] = list(solve.weights), []
        return [{**log, "keep_weight": w} for log, w in zip(stage_logs, weights)] if weights else stage_logs

    deltas, handles, logs, rounds = spread_in_rounds(model, layout, prepared, layers, solve, round_settings(config),
                                                     pad=pad, annotate=with_held_weights)
    revert_all(handles)
    first = rounds[0]
    facts = [{"subject": p.request.subject, "loss": float(first.loss[i]), "nll": float(first.nll[i]),
              "steps": sum(int(t.steps[i]) + 1 for t in rounds), "target": first.value[i],
              "final_loss": float(rounds[-1].loss[i])} for i, p in enumerate(prepared)]
    return EditResult(deltas, facts, logs)
