"""The edit payload: low-rank weight updates per module, applied and reverted exactly.

A `Delta` is ``left @ right`` in math order: ``left`` [d_v, r], ``right`` [r, d_k], for the
value projection at `module` (a dotted path).  ROME's update is rank one; MEMIT's and
AlphaEdit's have rank at most the number of edits.  `apply_deltas` keeps exact copies of
every weight it touches, so `revert()` restores them bit for bit.

Example::

    handle = apply_deltas(model, deltas)
    ...                                   # use the edited model
    handle.revert()                       # weights are bit-identical to before
    save_deltas(deltas, "delta.safetensors")
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from editspec.errors import EditspecError
from editspec.model.layout import module_at, set_value_weight, value_weight

FORMAT_VERSION = "1"


@dataclass(frozen=True)
class Delta:
    """A low-rank update ``left @ right`` ([d_v, r] @ [r, d_k]) to the weight at `module`."""

    module: str
    left: torch.Tensor
    right: torch.Tensor

    def __post_init__(self):
        if self.left.dim() != 2 or self.right.dim() != 2 or self.left.shape[1] != self.right.shape[0]:
            raise EditspecError(
                f"delta for `{self.module}` has mismatched factors "
                f"{tuple(self.left.shape)} and {tuple(self.right.shape)}"
            )

    @property
    def rank(self) -> int:
        """The inner dimension r (an upper bound on the matrix rank)."""
        return int(self.left.shape[1])

    def dense(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The full update ``left @ right`` [d_v, d_k], computed in `dtype`."""
        return self.left.to(dtype) @ self.right.to(dtype)

    def check_finite(self) -> None:
        """Raise `EditspecError` when either factor holds NaN or inf."""
        for name, t in (("left", self.left), ("right", self.right)):
            if not bool(torch.isfinite(t).all()):
                raise EditspecError(
                    f"the update for `{self.module}` contains NaN or inf ({name} factor); refusing it",
                    hint="the edit diverged: try a smaller learning rate, a larger mom2 weight or fewer edits",
                )


@dataclass
class AppliedDeltas:
    """What `apply_deltas` returns: exact copies of the touched weights, to undo the edit."""

    model: nn.Module
    originals: dict[str, torch.Tensor] = field(default_factory=dict)
    reverted: bool = False

    def revert(self) -> None:
        """Restore every touched weight bit for bit.  Calling it twice is harmless."""
        if self.reverted:
            return
        with torch.no_grad():
            for path, original in self.originals.items():
                module_at(self.model, path).weight.copy_(original)
        self.reverted = True

    def __enter__(self) -> "AppliedDeltas":
        return self

    def __exit__(self, *exc) -> None:
        self.revert()


@torch.no_grad()
def apply_deltas(model: nn.Module, deltas: Sequence[Delta]) -> AppliedDeltas:
    """Add every delta to its module's weight in place; return a handle whose `revert()` undoes it.

    Each update is formed and added in float64, then rounded once to the weight's dtype, so
    the result is deterministic and as exact as the dtype allows.  Deltas for the same module
    are applied in order.  NaN or inf deltas are refused before anything changes.
    """
    for d in deltas:
        d.check_finite()
    handle = AppliedDeltas(model)
    try:
        for d in deltas:
            module = module_at(model, d.module)
            if d.module not in handle.originals:
                handle.originals[d.module] = module.weight.detach().clone()
            weight = value_weight(module)  # [d_v, d_k] view (transposed for Conv1D)
            if tuple(weight.shape) != (d.left.shape[0], d.right.shape[1]):
                raise EditspecError(
                    f"delta for `{d.module}` is {d.left.shape[0]}x{d.right.shape[1]} "
                    f"but the weight is {tuple(weight.shape)} (math order [d_v, d_k])",
                    hint="the artifact was compiled for a different model",
                )
            new = weight.to(torch.float64) + d.dense(torch.float64).to(weight.device)
            set_value_weight(module, new)
    except BaseException:
        handle.revert()
        raise
    return handle


def _key(i: int, d: Delta, part: str) -> str:
    # A running index keeps repeated modules (sequential edits) distinct and ordered.
    return f"{i:04d}.{d.module}.{part}"


def save_deltas(deltas: Sequence[Delta], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Write deltas to a safetensors file with deterministic bytes, atomically.

    Refuses NaN/inf.  `metadata` (str -> str) is stored in the header next to the format version.
    """
    from safetensors.torch import save

    for d in deltas:
        d.check_finite()
    tensors: dict[str, torch.Tensor] = {}
    for i, d in enumerate(deltas):
        tensors[_key(i, d, "left")] = d.left.detach().cpu().contiguous()
        tensors[_key(i, d, "right")] = d.right.detach().cpu().contiguous()
    meta = {"format": "editspec.deltas", "format_version": FORMAT_VERSION,
            "modules": json.dumps([d.module for d in deltas])}
    meta.update(metadata or {})
    # safetensors writes its metadata from a hash map in random order; one JSON entry with
    # sorted keys keeps the file's bytes a function of its contents.
    header = {"editspec": json.dumps(meta, sort_keys=True, separators=(",", ":"))}
    data = save(dict(sorted(tensors.items())), metadata=header)
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def load_deltas(path: str | os.PathLike) -> tuple[list[Delta], dict[str, str]]:
    """Read deltas written by `save_deltas`; returns ``(deltas, metadata)``."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get("editspec")
        meta = json.loads(raw) if raw else {}
        if meta.get("format") != "editspec.deltas":
            raise EditspecError(f"{path} is not an editspec delta file")
        if meta.get("format_version") != FORMAT_VERSION:
            raise EditspecError(
                f"{path} has delta format version {meta.get('format_version')}; "
                f"this editspec reads version {FORMAT_VERSION}"
            )
        modules = json.loads(meta["modules"])
        deltas = []
        for i, module in enumerate(modules):
            left = f.get_tensor(f"{i:04d}.{module}.left")
            right = f.get_tensor(f"{i:04d}.{module}.right")
            deltas.append(Delta(module, left, right))
    for d in deltas:
        d.check_finite()
    return deltas, meta
