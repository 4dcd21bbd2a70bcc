"""ROME's settings (torch-free, so `editspec check` validates them without loading torch)."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from editspec.target_settings import StatisticsSettings


class RomeConfig(StatisticsSettings):
    """ROME settings.  Defaults are [heuristic] values for SmolLM2-135M (ALGORITHMS.md §1.4)."""

    layer: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(5, description="Layer whose MLP value projection is edited, or `auto` to choose per fact.")
    auto_layers: tuple[Annotated[int, Field(ge=0)], ...] = Field((3, 4, 5, 6, 7, 8), description="Candidate layers for `layer: auto`.")
    variant: Literal["r-rome", "original"] = Field(
        "r-rome", description="`r-rome` uses the template-averaged key consistently (Ŵk̄+b = v*); "
        "`original` reproduces ROME's clean-prompt key in the denominator and residual.")
    delta_as_delivered: bool = Field(
        True, description="Optimise δ as the rank-one update will add it at each template (δ·uᵀk_t/uᵀk̄) instead of "
        "as a constant [SmolLM2: R-ROME's ES misses were edits weaker at the bare prompt than at the average key]; "
        "false reproduces the papers exactly.")
    v_lr: float = Field(0.5, gt=0, description="Adam learning rate for the value vector δ.")
    v_num_grad_steps: int = Field(25, ge=1, description="Most optimisation iterations for δ (the last only evaluates).")
    v_weight_decay: float = Field(1e-3, ge=0, description="Weight of ‖δ‖/‖v_init‖² in the loss.")
    clamp_norm_factor: float = Field(4.0, gt=0, description="δ is kept within this multiple of ‖v_init‖.")
    kl_factor: float = Field(0.0625, ge=0, description="Weight of the KL term on the `{subject} is a` prompt.")
    stop_loss: float = Field(0.05, ge=0, description="A fact stops optimising once its loss is below this.")
    stop_prob: float = Field(
        0.9, gt=0, le=1, description="A fact also stops once its target's mean token probability reaches this (1: never).")
    context_template_counts: tuple[tuple[int, int], ...] = Field(
        ((5, 5), (5, 10)), description="Context templates as (count, max tokens) pairs, besides the bare prompt "
        "(the reference uses ((10, 5), (10, 10)); half as many scored the same on SmolLM2 and run 30% faster).")
    template_seed: int = Field(0, description="Seed for sampling context templates from the unedited model.")
    mom2_ridge: float = Field(1e-4, ge=0, description="Ridge added to C, as a fraction of its mean eigenvalue.")
    facts_per_batch: int = Field(16, ge=1, description="Facts whose δ are optimised together in one batch.")

    def optim(self):
        """The δ-optimisation settings (an `editspec.locate.OptimSettings`)."""
        from editspec.locate.targets import OptimSettings

        return OptimSettings(self.v_lr, self.v_num_grad_steps, self.kl_factor, self.v_weight_decay,
                             self.clamp_norm_factor, self.stop_loss, self.facts_per_batch,
                             stop_prob=self.stop_prob)
