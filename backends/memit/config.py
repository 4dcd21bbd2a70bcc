"""MEMIT's settings (torch-free, so `editspec check` validates them without loading torch)."""
from __future__ import annotations

from pydantic import Field, field_validator

from editspec.families.locate.target_settings import ResidualTargetSettings


def default_layers(num_layers: int, count: int = 5) -> tuple[int, ...]:
    """[heuristic] `count` consecutive layers starting near 14% of the depth (SmolLM2: 4-8)."""
    start = min(max(round(num_layers * 0.14), 0), max(num_layers - count, 0))
    return tuple(range(start, min(start + count, num_layers)))


class MemitConfig(ResidualTargetSettings):
    """MEMIT settings.  Defaults are chosen for SmolLM2-135M.

    Why each default: docs/methods/memit.md#settings-and-why-the-defaults.
    """

    layers: tuple[int, ...] | None = Field(
        (4, 5, 6, 7, 8), description="Edited layers (their MLP value projections); None picks ~14% of depth, 5 layers.")
    mom2_update_weight: float = Field(
        1000.0, ge=0, description="λ: how strongly the preserved keys (λ·C) resist change, trading efficacy for "
        "locality [heuristic: 100 CounterFact edits on SmolLM2 in one batch, ES/PS/NS: 1000 → 1.0/0.965/0.669, "
        "2000 → 1.0/0.96/0.676, 3000 → 0.99/0.915/0.689, 4000 → 0.96/0.875/0.692; unedited NS 0.701].")
    mom2_ridge: float = Field(1e-4, ge=0, description="Ridge added to C, as a fraction of its mean eigenvalue.")
    v_lr: float = Field(
        1.0, gt=0, description="Adam learning rate for the residual target δ [heuristic: 100 CounterFact edits on SmolLM2, "
        "δ steps in all / ES / PS / NS: 0.5 → 1517 / 1.0 / 0.945 / 0.675, 1.0 → 1005 / 1.0 / 0.965 / 0.669, "
        "1.5 → 832 / 1.0 / 0.97 / 0.668; 0.25 leaves facts short of their target].")

    @field_validator("layers")
    @classmethod
    def _sorted_unique(cls, layers):
        if layers is not None and (not layers or sorted(set(layers)) != list(layers) or layers[0] < 0):
            raise ValueError("layers must be a non-empty increasing list of layer indices (0 or more) without repeats")
        return layers
