"""Small pieces every locate-then-edit backend shares: statistics lookup, results, templates,
and running sums of key outer products kept as low-rank factors."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence, Union

import torch

from editspec.model.deltas import Delta
from editspec.errors import EditspecError
from editspec.model.tokens import context_templates

# Second moments C = E[k kᵀ] per layer: a mapping, or a callable (e.g. a cached stats helper).
StatsSource = Union[Mapping[int, torch.Tensor], Callable[[int], torch.Tensor], None]


def second_moment_for(stats: StatsSource, layer: int, d_k: int, ridge: float = 0.0) -> torch.Tensor | None:
    """``C + ridge·tr(C)/d_k·I`` for `layer` as float64 [d_k, d_k]; None means identity (no stats)."""
    if stats is None:
        return None
    c = stats(layer) if callable(stats) else stats.get(layer)
    if c is None:
        raise EditspecError(f"no second-moment statistics for layer {layer}")
    c = torch.as_tensor(c).to("cpu", torch.float64)
    if tuple(c.shape) != (d_k, d_k):
        raise EditspecError(f"statistics for layer {layer} are {tuple(c.shape)}, expected ({d_k}, {d_k})")
    if not bool(torch.isfinite(c).all()):
        raise EditspecError(f"statistics for layer {layer} contain NaN or inf")
    if ridge:
        c = c + ridge * torch.trace(c) / d_k * torch.eye(d_k, dtype=torch.float64)
    return c


def least_squares_update(keys: torch.Tensor, values: torch.Tensor, moment: torch.Tensor | None, weight: float,
                         preserved: torch.Tensor | None = None, gram: torch.Tensor | None = None,
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors ``(left = Vᵀ [d_v, n], right [n, d_k])`` of ``ΔW = Vᵀ K (weight·C + KᵀK + PᵀP + G)⁻¹``.

    The least-squares update that maps `keys` [n, d_k] to `values` [n, d_v] at the least cost
    to the keys that C = `moment` (None: identity) stands for, `weight` tokens of them, to
    `preserved` keys P [m, d_k], pinned at zero shift (docs/methods/memit.md), and to keys
    already summed into `gram` G [d_k, d_k] (``Σ kkᵀ`` of earlier edits, pinned alike).
    Float64; one [d_k, d_k] system however many keys.  memit and ultraedit solve with it.
    """
    k = keys.to(torch.float64)
    c = torch.eye(k.shape[1], dtype=torch.float64) if moment is None else moment.to(torch.float64)
    system = weight * c + k.T @ k  # [d_k, d_k], symmetric
    if preserved is not None and preserved.numel():
        p = preserved.to(torch.float64)
        system = system + p.T @ p
    if gram is not None:
        system = system + gram.to(torch.float64)
    right = torch.linalg.solve(system, k.T).T  # [n, d_k]
    return values.to(torch.float64).T.contiguous(), right.contiguous()


def templates_for(model, tokenizer, templates: Sequence[Sequence[str]] | None,
                  counts: Sequence[tuple[int, int]], seed: int) -> list[list[str]]:
    """The given template groups, or groups sampled from the (unedited) model with `seed`."""
    if templates is not None:
        return [list(g) for g in templates]
    return context_templates(model, tokenizer, counts, seed=seed)


@dataclass
class EditResult:
    """What a backend computes: the deltas, plus per-fact and per-layer numbers worth logging."""

    deltas: list[Delta]
    facts: list[dict] = field(default_factory=list)
    layers: list[dict] = field(default_factory=list)


def extend_factor(factor: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
    """A factor F [d, r] of ``F Fᵀ = old + rowsᵀ rows``, where `factor` holds the old sum (None: 0).

    A sum of n outer products has rank at most n, so it is kept as the rows themselves while
    that is smaller than the dense [d, d] matrix: an artifact that carries it grows with the
    number of edits, not with the layer.  Once r reaches d, the factor is folded once into
    ``U·√Λ`` over the sum's eigenvectors (at most d columns, zero eigenvalues dropped), so it
    never grows past the dense size.  Float64 throughout.
    """
    rows = rows.to(torch.float64)
    grown = rows.T.contiguous() if factor is None else torch.cat([factor.to(torch.float64), rows.T], dim=1)
    d, r = grown.shape
    return grown if r < d else factor_of_gram(grown @ grown.T)


def factor_of_gram(gram: torch.Tensor) -> torch.Tensor:
    """A factor F with ``F Fᵀ = gram`` for a dense symmetric PSD sum (as older artifacts stored it)."""
    values, vectors = torch.linalg.eigh(gram.to(torch.float64))
    keep = values > values.max().clamp(min=0) * gram.shape[0] * torch.finfo(torch.float64).eps
    return (vectors[:, keep] * values[keep].sqrt()).contiguous()
