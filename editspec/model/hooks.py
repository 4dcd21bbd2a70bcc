"""Forward hooks that always remove themselves.

Every hook here is a context manager: leaving the ``with`` block (normally or by an
exception) removes it.  Decoder layers return a bare tensor in recent `transformers`
releases and a tuple (hidden, ...) in older ones; `_hidden` / `_with_hidden` handle both.

Example::

    with record_inputs(model, ["model.layers.5.mlp.down_proj"]) as seen:
        model(input_ids)
    keys = seen["model.layers.5.mlp.down_proj"]        # [batch, pos, d_k]
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import nn

from editspec.model.layout import layout_for, module_at


def _hidden(output):
    """The hidden-state tensor of a module output (bare tensor or tuple)."""
    return output[0] if isinstance(output, tuple) else output


def _with_hidden(output, hidden: torch.Tensor):
    """`output` with its hidden-state tensor replaced, keeping its structure."""
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def gather_positions(states: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rows ``states[b, positions[b]]``: [batch, pos, d] and [batch] -> [batch, d]."""
    index = positions.to(states.device).view(-1, 1, 1).expand(-1, 1, states.shape[-1])
    return states.gather(1, index).squeeze(1)


@contextlib.contextmanager
def record_inputs(model: nn.Module, paths: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Record the (first positional) input of each module in `paths`, by path.

    Values are the full tensors, [batch, pos, d_in]; the last call wins when a module runs twice.
    """
    seen: dict[str, torch.Tensor] = {}
    handles = []

    def make(path):
        def pre_hook(module, args):
            seen[path] = args[0]  # [batch, pos, d_in]

        return pre_hook

    try:
        for path in paths:
            handles.append(module_at(model, path).register_forward_pre_hook(make(path)))
        yield seen
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def record_outputs(model: nn.Module, paths: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Record the hidden-state output of each module in `paths`, [batch, pos, d_out]."""
    seen: dict[str, torch.Tensor] = {}
    handles = []

    def make(path):
        def hook(module, args, output):
            seen[path] = _hidden(output)  # [batch, pos, d_out]

        return hook

    try:
        for path in paths:
            handles.append(module_at(model, path).register_forward_hook(make(path)))
        yield seen
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def add_to_output(
    model: nn.Module, path: str, vectors: torch.Tensor, positions: torch.Tensor
) -> Iterator[None]:
    """Add ``vectors[b]`` to the module's output at ``(b, positions[b])`` on every forward.

    `vectors` is [batch, d_out] and may require grad (the edit methods train it); `positions`
    is a [batch] long tensor of explicit per-example indices, so padding side never matters.
    A position of -1 leaves that row untouched.
    """
    module = module_at(model, path)

    def hook(mod, args, output):
        hidden = _hidden(output)  # [batch, pos, d_out]
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        pos = positions.to(hidden.device)
        keep = pos >= 0
        if not bool(keep.any()):
            return output
        # Out of place: the module output may be needed by autograd as it was.
        bump = torch.zeros_like(hidden)
        # With a device map the module may sit on another device than the vectors (kept with the head).
        bump[rows[keep], pos[keep]] = vectors.to(device=hidden.device, dtype=hidden.dtype)[keep]
        return _with_hidden(output, hidden + bump)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class _Recorded(nn.Module):
    """Stands in for a block below δ's site: returns the block's recorded output, computes nothing."""

    def __init__(self, hidden: torch.Tensor):
        super().__init__()
        self.hidden = hidden

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.hidden


def blocks_below(model, site: str) -> list[str]:
    """Paths of the blocks under the block that holds `site`, bottom first ([] if none or unknown)."""
    layout = layout_for(model)
    blocks = [layout.block_at(i) for i in range(layout.num_layers(model))]
    holder = next((i for i, b in enumerate(blocks) if site == b or site.startswith(b + ".")), None)
    return blocks[:holder] if holder else []


@contextlib.contextmanager
def raw_outputs(model, blocks: Sequence[str]):
    """Yields a list that gets each run block's output as it is returned (a tensor, or a tuple)."""
    found: list = []
    handles = [module_at(model, b).register_forward_hook(lambda module, args, output: found.append(output))
               for b in blocks]
    try:
        yield found
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def replaying(model, blocks: Sequence[str], hidden: torch.Tensor | None):
    """With `hidden` (the top block's recorded output), `blocks` are swapped for `_Recorded` stand-ins."""
    if hidden is None or not blocks:
        yield
        return
    swapped = []
    try:
        for path in blocks:
            parent, _, name = path.rpartition(".")
            holder = module_at(model, parent)
            swapped.append((holder, name, getattr(holder, name)))
            setattr(holder, name, _Recorded(hidden))
        yield
    finally:
        for holder, name, block in swapped:
            setattr(holder, name, block)


class _StopForward(Exception):
    """Raised by `stop_after` to end a forward pass early."""


@contextlib.contextmanager
def stop_after(model: nn.Module, path: str) -> Iterator[None]:
    """End every forward pass inside the block right after module `path` has run.

    The model call inside the block returns nothing; read what you need with
    `record_inputs` / `record_outputs`.  Saves the layers above the one of interest.
    """
    def hook(module, args, output):
        raise _StopForward

    handle = module_at(model, path).register_forward_hook(hook)
    try:
        yield
    except _StopForward:
        pass
    finally:
        handle.remove()


def run_until(model: nn.Module, path: str, **inputs) -> None:
    """Run ``model(**inputs)`` and stop once module `path` has produced its output."""
    with stop_after(model, path):
        model(**inputs)
