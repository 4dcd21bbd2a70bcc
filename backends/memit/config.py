"""MEMIT's settings (torch-free, so `editspec check` validates them without loading torch)."""
from __future__ import annotations

from pydantic import Field

from editspec.families.locate.target_settings import KeepReplySettings, LayerList, RoundSettings
from editspec.build.backend import Capabilities


def default_layers(num_layers: int, count: int = 5) -> tuple[int, ...]:
    """[heuristic] `count` consecutive layers starting near 14% of the depth (SmolLM2: 4-8)."""
    start = min(max(round(num_layers * 0.14), 0), max(num_layers - count, 0))
    return tuple(range(start, min(start + count, num_layers)))


# Edits only: canonical and forget blocks get a warning at their line.
CAPABILITIES = Capabilities(white_box=True, batch=True, sequential=True, reversible=True)


class MemitConfig(RoundSettings, KeepReplySettings):
    """MEMIT settings.  Defaults are chosen for SmolLM2-135M.

    Why each default: docs/methods/memit.md#settings-and-why-the-defaults.
    """

    layers: LayerList | None = Field(
        (4, 5, 6, 7, 8), description="Edited layers (their MLP value projections); None picks ~14% of depth, 5 layers.")
    mom2_update_weight: float = Field(
        1000.0, ge=0, description="λ: how strongly the preserved keys (λ·C) resist change; higher keeps more of the "
        "neighbourhood and edits less (sweep in docs/benchmarks.md).")
    mom2_ridge: float = Field(1e-4, ge=0, description="Ridge added to C, as a fraction of its mean eigenvalue.")
    preserve_keep: bool = Field(
        True, description="Put the spec's `keep` facts in every layer's solve as keys whose output must not move "
        "(the keep prompt with its answer at every position, and the keep question in chat form), weighted by "
        "`keep_weight`: the update then leaves what the spec says to keep where it was.")
    keep_weight: float = Field(
        20.0, gt=0, description="With `preserve_keep`: how many tokens of the statistics C each kept key counts "
        "for in the solve (λ·C counts `mom2_update_weight` tokens); larger holds them more firmly and fits the edits "
        "less.  With more keep facts than edits each key counts edits / keep facts of it, so many keep facts an "
        "edit do not outweigh the edits (docs/methods/locate.md#keep-facts-held).")
    keep_fit: float | None = Field(
        None, gt=0, le=1, description="With `preserve_keep`: at each layer, quarter the held weight until the update "
        "delivers at least this share of what it would deliver at the edit keys without the keep facts (0.9: the hold "
        "may cost a tenth of the fit); keep facts far from the edits keep their full weight, neighbours of the edits "
        "get less.  None: the weight is `keep_weight` (shared, docs/methods/locate.md#keep-facts-held).")
    v_lr: float = Field(
        1.0, gt=0, description="Adam learning rate for the residual target δ; higher needs fewer δ steps, too low "
        "leaves facts short of their target (docs/benchmarks.md).")

