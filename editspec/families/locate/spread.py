"""MEMIT-style spreading of a residual-stream target over several layers
(docs/methods/locate.md#spreading-a-target-over-several-layers).

Layers are processed in increasing order and each update is applied at once, so the keys and
the residual at the next layer are measured on the partially edited model.  The method-specific
solve (MEMIT's λC ridge, AlphaEdit's null-space projection) is a function passed in.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from editspec.model.deltas import AppliedDeltas, Delta, apply_deltas
from editspec.model.layout import ModelLayout, module_at, value_weight

from .keys import average_keys, template_keys
from .requests import PreparedRequest

# solve(layer, K [n, d_k], Rsd [n, d_v]) -> (left [d_v, r], right [r, d_k]), float64
Solver = Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def request_key_matrix(keys_rows: Sequence[torch.Tensor], prepared: Sequence[PreparedRequest]) -> torch.Tensor:
    """The keys an edit must map, one row per column of the solve: [n + chat rows, d_k].

    First each request's key averaged over its raw template rows, then the key of every chat
    row (request order): the templated user turn reads the subject in another context, far
    from the raw average, so it gets its own column instead of being averaged away.
    """
    raw, chat = [], []
    for k, p in zip(keys_rows, prepared):
        plain = [r for r, is_chat in enumerate(p.chat) if not is_chat] or list(range(len(p.group)))
        raw.append(average_keys(k[plain], [p.group[r] for r in plain]))
        chat += [k[r] for r, is_chat in enumerate(p.chat) if is_chat]
    return torch.stack(raw + chat)


def chat_owners(prepared: Sequence[PreparedRequest]) -> list[tuple[int, int]]:
    """(request, row) of every chat row, in the order `request_key_matrix` puts their keys."""
    return [(i, r) for i, p in enumerate(prepared) for r, is_chat in enumerate(p.chat) if is_chat]


def spread_over_layers(
    model, layout: ModelLayout, prepared: Sequence[PreparedRequest], layers: Sequence[int],
    targets: torch.Tensor, solve: Solver, *, pad: int,
) -> tuple[list[Delta], list[AppliedDeltas], list[dict]]:
    """Insert residual targets `targets` [n, d_model] (h^L + δ at L = last layer) over `layers`.

    At step t the residual ``(Z − h^L)/(T − t)`` is what layer ``layers[t]`` must add.  A chat
    row is a column of its own: its target is its own ``h^L`` on the unedited model plus the
    fact's δ (``Z − h^L`` at the bare prompt), the δ that was optimised for every row.  Returns
    the deltas, the handles of the applied updates (the caller reverts them) and per-layer logs.
    """
    layers = sorted(layers)
    last = layers[-1]
    owners = chat_owners(prepared)
    deltas, handles, logs = [], [], []
    try:
        for t, layer in enumerate(layers):
            keys, rows_h = template_keys(model, layout, prepared, [layer], pad=pad, block_layer=last, every_row=True)
            k = request_key_matrix(keys[layer], prepared)  # [n + chat rows, d_k]
            h = torch.stack([rows_h[i][0] for i in range(len(prepared))] + [rows_h[i][r] for i, r in owners])
            if t == 0:  # still the unedited model: fix every column's target
                shift = targets - h[:len(prepared)]  # each fact's δ
                goal = torch.cat([targets, h[len(prepared):] + shift[[i for i, _ in owners]]]) if owners else targets
            residual = (goal - h) / (len(layers) - t)  # [n + chat rows, d_v]
            left, right = solve(layer, k, residual)
            dtype = value_weight(module_at(model, layout.mlp_out_at(layer))).dtype
            dtype = torch.float64 if dtype == torch.float64 else torch.float32
            delta = Delta(layout.mlp_out_at(layer), left.to(dtype), right.to(dtype))
            handles.append(apply_deltas(model, [delta]))
            deltas.append(delta)
            logs.append({"layer": layer, "residual_norm": float((goal - h).norm(dim=1).mean()),
                         "delta_norm": float(delta.dense().norm())})
    except BaseException:
        for handle in reversed(handles):
            handle.revert()
        raise
    return deltas, handles, logs


def revert_all(handles: Sequence[AppliedDeltas]) -> None:
    """Undo applied updates, newest first."""
    for handle in reversed(handles):
        handle.revert()
