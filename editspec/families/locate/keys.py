"""Keys and residual-stream values at the subject's last token, batched and padding-proof."""
from __future__ import annotations

from typing import Sequence

import torch

from editspec.model.continuation import model_device
from editspec.model.hooks import gather_positions, record_inputs, record_outputs, stop_after
from editspec.model.layout import ModelLayout
from editspec.model.tokens import right_pad

from .requests import PreparedRequest


@torch.no_grad()
def collect_at(
    model, sequences: Sequence[Sequence[int]], positions: Sequence[int], *, pad: int,
    inputs: Sequence[str] = (), outputs: Sequence[str] = (), stop: str | None = None,
    batch_size: int = 64,
) -> dict[str, torch.Tensor]:
    """Module inputs/outputs at one position per sequence: ``{path: [n, d]}`` (float64, CPU).

    Sequences are right-padded in batches of `batch_size` and read at explicit positions, so a
    sequence gives the same vectors alone or in a batch.  `stop` ends each forward pass right
    after that module, saving the layers above it.
    """
    found: dict[str, list[torch.Tensor]] = {p: [] for p in (*inputs, *outputs)}
    device = model_device(model)
    for start in range(0, len(sequences), batch_size):
        chunk = [list(s) for s in sequences[start:start + batch_size]]
        ids, mask = right_pad(chunk, pad)
        pos = torch.tensor(list(positions[start:start + batch_size]), dtype=torch.long)
        with record_inputs(model, inputs) as seen_in, record_outputs(model, outputs) as seen_out:
            if stop is None:
                model(input_ids=ids.to(device), attention_mask=mask.to(device))
            else:
                with stop_after(model, stop):
                    model(input_ids=ids.to(device), attention_mask=mask.to(device))
        for path, states in (*seen_in.items(), *seen_out.items()):
            found[path].append(gather_positions(states, pos).to("cpu", torch.float64))  # [b, d]
    return {p: torch.cat(v) for p, v in found.items()}


def _last_path(layout: ModelLayout, layers: Sequence[int], block_layer: int | None) -> str:
    # The module after which nothing more is needed: the deepest key, or the block output.
    deepest = max(layers) if layers else -1
    if block_layer is not None and block_layer >= deepest:
        return layout.block_at(block_layer)
    return layout.mlp_out_at(deepest)


def template_keys(
    model, layout: ModelLayout, prepared: Sequence[PreparedRequest], layers: Sequence[int], *,
    pad: int, block_layer: int | None = None, batch_size: int = 64, every_row: bool = False,
) -> tuple[dict[int, list[torch.Tensor]], torch.Tensor | list[torch.Tensor] | None]:
    """Keys at every layer in `layers` for every rewriting row, cut at the subject's last token.

    Returns ``({layer: [per request: [rows, d_k]]}, block)``, where `block` [n, d_model] is the
    output of block `block_layer` at the bare prompt's subject token (MEMIT's ``h^L``), or None;
    with `every_row`, per request at every row's subject token ([rows, d_model] each).
    """
    seqs, pos, owner = [], [], []
    for i, prep in enumerate(prepared):
        for row, index in zip(prep.rows, prep.subject_index):
            seqs.append(row[: index + 1])  # later tokens cannot change these keys (causal)
            pos.append(index)
            owner.append(i)
    in_paths = [layout.mlp_out_at(l) for l in layers]
    out_paths = [layout.block_at(block_layer)] if block_layer is not None else []
    got = collect_at(
        model, seqs, pos, pad=pad, inputs=in_paths, outputs=out_paths,
        stop=_last_path(layout, layers, block_layer), batch_size=batch_size,
    )
    owner_t = torch.tensor(owner)
    keys = {l: [got[layout.mlp_out_at(l)][owner_t == i] for i in range(len(prepared))] for l in layers}
    block = None
    if block_layer is not None and every_row:
        block = [got[layout.block_at(block_layer)][owner_t == i] for i in range(len(prepared))]
    elif block_layer is not None:
        first_rows = torch.tensor([int((owner_t == i).nonzero()[0]) for i in range(len(prepared))])
        block = got[layout.block_at(block_layer)][first_rows]  # row 0 of each request is the bare prompt
    return keys, block


def average_keys(rows: torch.Tensor, groups: Sequence[int]) -> torch.Tensor:
    """Average [rows, d_k] within each template group, then across groups.

    With groups ``[["{}"], samples]`` the bare prompt weighs one half, as in MEMIT; with one
    group this is the plain mean, as in ROME.
    """
    groups_t = torch.tensor(list(groups))
    means = [rows[groups_t == g].mean(0) for g in sorted(set(groups))]
    return torch.stack(means).mean(0)


def request_keys(
    model, layout: ModelLayout, prepared: Sequence[PreparedRequest], layer: int, *,
    pad: int, batch_size: int = 64,
) -> torch.Tensor:
    """Template-averaged keys ``k*`` at `layer`, one row per request: [n, d_k] float64."""
    keys, _ = template_keys(model, layout, prepared, [layer], pad=pad, batch_size=batch_size)
    return torch.stack([average_keys(k, p.group) for k, p in zip(keys[layer], prepared)])


@torch.no_grad()
def keys_at(
    model, layout: ModelLayout, texts: Sequence[tuple], layer: int, *,
    pad: int, batch_size: int = 64,
) -> torch.Tensor:
    """MLP keys at `layer` of every ``(ids, positions)`` text, at each of its positions: [m, d_k] float64.

    Used for the keys an update should leave alone (a spec's `keep` facts): every position whose
    MLP output reaches the kept answer's prediction.  A text ``(ids, positions, weight)`` has its
    keys scaled by √weight, so each counts `weight` of a plain text's key in a moment kkᵀ.
    Right-padded batches, so a text gives the same keys alone or in a batch; the forward pass
    stops at the layer's value projection.
    """
    path = layout.mlp_out_at(layer)
    found = []
    device = model_device(model)
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        ids, mask = right_pad([list(t[0]) for t in chunk], pad)
        with record_inputs(model, [path]) as seen, stop_after(model, path):
            model(input_ids=ids.to(device), attention_mask=mask.to(device))
        states = seen[path]
        for row, (_, positions, *weight) in enumerate(chunk):
            keys = states[row, list(positions)].to("cpu", torch.float64)
            found.append(keys * weight[0] ** 0.5 if weight else keys)
    if not found:
        return torch.zeros(0, 0, dtype=torch.float64)
    return torch.cat(found)
