"""Rows that run in two parts: a prefix once, as a KV cache, and a suffix at every step.

An optimisation that changes the model only at or after some token of each row (δ at the
subject's last token, a side memory at the answer positions) cannot change what the tokens
before it compute.  Those prefixes run once, without grad; every step then runs only the
suffixes, attending to the cached keys and values.

    split = SplitRows(rows, [first_changed(r) for r in rows], pad)
    kv = split.prefix_cache(model.base_model, device)           # once
    for step in ...:
        hidden = model.base_model(**split.inputs(kv, model, device)).last_hidden_state  # suffix positions

Prefixes are right-padded, so a real prefix token never sees a pad; the attention mask hides the
pads from the suffix, and each suffix token's position id continues its own prefix.
"""
from __future__ import annotations

from typing import Sequence

import torch

from editspec.model.kvcache import cache_kwarg, output_cache
from editspec.model.tokens import right_pad


def cache_layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) of each layer of a transformers KV cache, across versions."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))


def cache_for_rows(kv, rows: torch.Tensor | None, config, width: int | None = None):
    """A fresh KV cache holding `rows` of the cached (keys, values) (None: every row), cut to the first
    `width` positions.  A forward appends to it, so each step needs its own."""
    from transformers import DynamicCache

    # Layers may sit on several devices.
    data = [(k[rows.to(k.device), :, :width], v[rows.to(v.device), :, :width]) if rows is not None
            else (k[:, :, :width], v[:, :, :width]) for k, v in kv]
    try:
        return DynamicCache(ddp_cache_data=data, config=config)
    except TypeError:  # transformers < 4.56
        return DynamicCache.from_legacy_cache(tuple(data))


def prefix_fits(model, longest: int) -> bool:
    """Whether rows of `longest` tokens can run split: a sliding window shorter than them would see the
    pad gap between a prefix and its suffix."""
    window = getattr(model.config.get_text_config(), "sliding_window", None)
    return not window or longest < window


class SplitRows:
    """Token rows split at `split[r]`: `prefix_ids` / `prefix_mask` [rows, width] (right-padded),
    `prefix_len` [rows], `suffix_ids` / `suffix_mask` [rows, longest suffix] (right-padded)."""

    def __init__(self, rows: Sequence[Sequence[int]], split: Sequence[int], pad: int):
        prefixes = [list(r[:p]) for r, p in zip(rows, split)]
        self.width = max((len(p) for p in prefixes), default=0)
        self.prefix_ids, self.prefix_mask = right_pad(prefixes, pad) if self.width else (None, None)
        self.prefix_len = torch.tensor([len(p) for p in prefixes])
        self.suffix_ids, self.suffix_mask = right_pad([list(r[p:]) for r, p in zip(rows, split)], pad)

    def prefix_cache(self, base, device) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """Run every prefix once, without grad: the (keys, values) of each layer (None: no prefix)."""
        if not self.width:
            return None
        # Every position attends (causally) in this pass: a row made only of pads would otherwise
        # have no key to attend to and turn NaN in float64.  Pads sit after the real tokens, so
        # the real tokens' keys and values are exact; the pads' are finite and masked out later.
        pos = torch.arange(self.width).expand(len(self.prefix_ids), -1)
        with torch.no_grad():
            out = base(input_ids=self.prefix_ids.to(device), attention_mask=torch.ones_like(self.prefix_ids).to(device),
                       position_ids=pos.to(device), use_cache=True)
        return cache_layers(output_cache(out))

    def inputs(self, kv, model, device, rows: torch.Tensor | None = None, suffix_len: int | None = None) -> dict:
        """Keyword arguments of a forward over the suffixes of `rows` (None: all), cut to `suffix_len`
        positions, continuing their cached prefixes (`kv` None: the suffixes alone, from position 0)."""
        suffix_len = int(self.suffix_ids.shape[1]) if suffix_len is None else suffix_len
        pick = (lambda t: t) if rows is None else (lambda t: t[rows])
        ids, mask = pick(self.suffix_ids)[:, :suffix_len], pick(self.suffix_mask)[:, :suffix_len]
        kwargs = {}
        if kv is not None:
            prefix = max(int(pick(self.prefix_len).max()), 1)  # right-padded: later columns are all pads
            mask = torch.cat([pick(self.prefix_mask)[:, :prefix], mask], 1)
            kwargs = {cache_kwarg(model.base_model): cache_for_rows(kv, None if rows is None else rows.to(device),
                                                                    model.config, prefix)}
        positions = pick(self.prefix_len).unsqueeze(1) + torch.arange(suffix_len)
        return dict(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                    use_cache=kv is not None, **kwargs)
