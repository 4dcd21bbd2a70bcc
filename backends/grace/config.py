"""Settings of the `grace` backend (torch-free, so `editspec check` validates them without torch)."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from editspec.build.backend import Capabilities
from editspec.families.memory.settings import MemorySettings


# A memory of edited facts: canonical and forget blocks are left out (with a warning).
CAPABILITIES = Capabilities(white_box=True, batch=True, sequential=True, reversible=True)



class GraceConfig(MemorySettings):
    """GRACE (Hartvigsen et al. 2023): a codebook of keys at one layer; values replace its output."""

    layer: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        "auto", description="Layer whose MLP value projection is wrapped; `auto`: 80% of the depth (layer 24 of SmolLM2's 30).")
    edit_lr: float = Field(1.0, gt=0, description="Adam learning rate for the values.")
    n_iter: int = Field(50, ge=1, description="Most optimisation steps for the values.")
    stop_loss: float = Field(0.01, ge=0, description="Value training stops once the mean target NLL is below this.")
    value_init: Literal["warm", "cold"] = Field(
        "warm", description="Values start from the layer's own output at the key (`warm`) or uniform random (`cold`).")
