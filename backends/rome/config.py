"""ROME's settings (torch-free, so `editspec check` validates them without loading torch)."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from editspec.families.locate.target_settings import KeepReplySettings, ResidualTargetSettings
from editspec.build.backend import Capabilities


# One fact at a time; canonical and forget blocks are not facts ROME can write.
CAPABILITIES = Capabilities(white_box=True, batch=False, sequential=True, reversible=True)


class RomeConfig(ResidualTargetSettings, KeepReplySettings):
    """ROME settings.  Defaults are chosen for SmolLM2-135M.

    Why each default: docs/methods/rome.md#settings-and-why-the-defaults.

    The δ-optimisation settings are MEMIT's (`ResidualTargetSettings`); ROME's δ sits at the
    MLP output, so ``h^L_init`` there reads ``v_init``.  Only the defaults that differ are
    declared here.
    """

    layer: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(5, description="Layer whose MLP value projection is edited, or `auto` to choose per fact.")
    auto_layers: tuple[Annotated[int, Field(ge=0)], ...] = Field((3, 4, 5, 6, 7, 8), description="Candidate layers for `layer: auto`.")
    variant: Literal["r-rome", "original"] = Field(
        "r-rome", description="`r-rome` uses the template-averaged key consistently (Ŵk̄+b = v*); "
        "`original` reproduces ROME's clean-prompt key in the denominator and residual.")
    delta_as_delivered: bool = Field(
        True, description="Optimise δ as the rank-one update will add it at each template (δ·uᵀk_t/uᵀk̄) instead of "
        "as a constant, so the edit is as strong at the bare prompt as at the averaged key; false reproduces the "
        "papers exactly.")
    stop_prob: float = Field(
        0.9, gt=0, le=1, description="A fact also stops once its target's mean token probability reaches this (1: never).")
    context_template_counts: tuple[tuple[int, int], ...] = Field(
        ((5, 5), (5, 10)), description="Context templates as (count, max tokens) pairs, besides the bare prompt "
        "(the reference uses ((10, 5), (10, 10)); docs/benchmarks.md).")
    straggler_steps: int = Field(
        35, ge=0, description="Extra δ iterations, within `straggler_clamp_factor`, for the facts that met neither stop "
        "criterion in `v_num_grad_steps` (0: none).")
    mom2_ridge: float = Field(1e-4, ge=0, description="Ridge added to C, as a fraction of its mean eigenvalue.")
    facts_per_batch: int = Field(16, ge=1, description="Facts whose δ are optimised together in one batch.")
    preserve_keep: bool = Field(
        True, description="Hold the spec's `keep` facts where they are: their keys (the keep prompt with its answer at "
        "every position, and the keep question in chat form) join the statistics C that fix each update's direction, "
        "so the update moves their outputs little (docs/methods/rome.md#keep-facts-held).")
    keep_weight: float = Field(
        0.02, gt=0, description="With `preserve_keep`: each kept key p adds keep_weight·ppᵀ to C, the mean kkᵀ of "
        "general text (0.02: memit's default hold, 20 tokens against its λ of 1,000); larger holds them more firmly "
        "and spreads the edit less to prompts like them.  With more keep facts than edits each key counts "
        "edits / keep facts of it, so many keep facts an edit do not outweigh the edits "
        "(docs/methods/locate.md#keep-facts-held).")
