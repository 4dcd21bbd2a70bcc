"""AlphaEdit's update math: a projector onto the preserved keys' null space, and its solve.

Sequential use: pass the returned state to the next call (on the model with the earlier
deltas applied); it carries the cached projectors and the running sum ``K_p K_pᵀ`` of every
earlier batch's keys, as a low-rank factor (`extend_factor`), so new edits also keep the old
ones in place.

Example::

    state = None
    for batch in batches:
        result, state = alphaedit_deltas(model, tokenizer, batch, stats=C, state=state)
        apply_deltas(model, result.deltas)
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Sequence

import torch

from editspec.model.chat import chat_enabled
from editspec.model.layout import layout_for
from editspec.families.locate import (
    EditRequest, EditResult, StatsSource, extend_factor, prepare_requests, request_key_matrix, revert_all,
    round_settings, second_moment_for, spread_in_rounds, template_keys, templates_for,
)
from editspec.model.tokens import pad_id

from .config import AlphaEditConfig


@dataclass
class AlphaEditState:
    """What sequential AlphaEdit carries between batches, per layer (float64 CPU)."""

    projectors: dict[int, torch.Tensor] = field(default_factory=dict)  # P [d_k, d_k]
    preserved: dict[int, torch.Tensor] = field(default_factory=dict)  # F [d_k, r], F Fᵀ = Σ K_p K_pᵀ
    edits: int = 0


# (digest of C, threshold, mode) -> P: sequential compiles in one process decompose each C once.
_PROJECTORS: dict[tuple, torch.Tensor] = {}
_PROJECTORS_KEPT = 16


def nullspace_projector(cov: torch.Tensor, threshold: float, mode: str = "absolute") -> torch.Tensor:
    """``P = U₀U₀ᵀ`` over the eigenvectors of C whose eigenvalue is below the threshold.

    P is symmetric and idempotent; ``P k ≈ 0`` for keys in C's well-sampled span.  The result
    for the same C (by content), threshold and mode is remembered; do not modify it in place.
    """
    cov = cov.to(torch.float64)
    content = cov.detach().to("cpu").contiguous().numpy().tobytes()
    key = (hashlib.blake2b(content, digest_size=16).hexdigest(), threshold, mode)
    if key not in _PROJECTORS:
        if len(_PROJECTORS) >= _PROJECTORS_KEPT:
            _PROJECTORS.pop(next(iter(_PROJECTORS)))
        _PROJECTORS[key] = _eigen_projector(cov, threshold, mode)
    return _PROJECTORS[key]


def _eigen_projector(cov: torch.Tensor, threshold: float, mode: str) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(cov)
    limit = threshold * float(values.max()) if mode == "relative" else threshold
    null = vectors[:, values < limit]  # [d_k, d_null]
    return null @ null.T


def alphaedit_update(
    keys: torch.Tensor, residual: torch.Tensor, projector: torch.Tensor, preserved: torch.Tensor | None, l2: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors of ``Δ = Rsd·(M⁻¹ P K)ᵀ``, ``M = P(KKᵀ + K_pK_pᵀ) + αI`` (math order, K as columns).

    `keys` [n, d_k], `residual` [n, d_v].  Returns ``(Rsdᵀ [d_v, n], (M⁻¹PK)ᵀ [n, d_k])`` in
    float64.  The result satisfies ``Δ = ΔP``, so keys that P annihilates keep their outputs.
    """
    k = keys.to(torch.float64)
    d_k = k.shape[1]
    gram = k.T @ k if preserved is None else k.T @ k + preserved
    system = projector @ gram + l2 * torch.eye(d_k, dtype=torch.float64)
    right = torch.linalg.solve(system, projector @ k.T).T  # [n, d_k]
    return residual.to(torch.float64).T.contiguous(), right.contiguous()


def alphaedit_deltas(
    model, tokenizer, requests: Sequence[EditRequest], config: AlphaEditConfig = AlphaEditConfig(), *,
    stats: StatsSource = None, state: AlphaEditState | None = None,
    templates: Sequence[Sequence[str]] | None = None,
) -> tuple[EditResult, AlphaEditState]:
    """One delta per edited layer for this batch, and the state for the next batch.

    `stats` gives C = E[kkᵀ] of the unedited model per layer (required: the null space is C's).
    The model is left unchanged; the returned state is a new object.
    """
    if stats is None:
        from editspec.errors import EditspecError
        raise EditspecError("AlphaEdit needs second-moment statistics: its null space is that of C")
    layout = layout_for(model)
    pad = pad_id(tokenizer)
    layers = config.layers
    old = state or AlphaEditState()
    new = AlphaEditState(dict(old.projectors), dict(old.preserved), old.edits)
    groups = templates_for(model, tokenizer, templates, config.context_template_counts, config.template_seed)
    prepared = prepare_requests(tokenizer, requests, groups, chat=chat_enabled(tokenizer, config.chat),
                                answer_end=config.answer_end)

    def solve(layer, keys, residual):
        if layer not in new.projectors:
            cov = second_moment_for(stats, layer, keys.shape[1])
            new.projectors[layer] = nullspace_projector(cov, config.nullspace_threshold, config.threshold_mode)
        factor = new.preserved.get(layer)
        gram = factor @ factor.T if factor is not None else None
        return alphaedit_update(keys, residual, new.projectors[layer], gram, config.l2)

    # With `passes` > 1, later rounds correct what the batch's other edits did at each fact's prompts,
    # under the same projector and preserved keys (this batch's keys join them only after its last round).
    deltas, handles, logs, rounds = spread_in_rounds(model, layout, prepared, layers, solve, round_settings(config),
                                                     pad=pad)
    try:
        # The keys of this batch, on the model with every round applied, join the preserved set.
        keys, _ = template_keys(model, layout, prepared, list(layers), pad=pad)
        for layer in layers:
            new.preserved[layer] = extend_factor(new.preserved.get(layer), request_key_matrix(keys[layer], prepared))
    finally:
        revert_all(handles)
    new.edits += len(prepared)
    for log in logs:
        log["nullspace_rank"] = int(round(float(torch.trace(new.projectors[log["layer"]]))))
    first = rounds[0]
    facts = [{"subject": p.request.subject, "loss": float(first.loss[i]), "nll": float(first.nll[i]),
              "steps": sum(int(t.steps[i]) + 1 for t in rounds), "target": first.value[i],
              "final_loss": float(rounds[-1].loss[i])} for i, p in enumerate(prepared)]
    return EditResult(deltas, facts, logs), new
