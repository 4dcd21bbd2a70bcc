"""Settings of the `melo` backend (torch-free, so `editspec check` validates them without torch)."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from editspec.families.memory.settings import MemorySettings
from editspec.build.backend import Capabilities

Layer = Annotated[int, Field(ge=0)]


# A memory of edited facts: canonical and forget blocks are left out (with a warning).
CAPABILITIES = Capabilities(white_box=True, batch=True, sequential=True, reversible=True)


class MeloConfig(MemorySettings):
    """MELO (Yu et al. 2024): a router of edit-scope clusters, and one LoRA block per edit batch."""

    router_layer: Layer | Literal["auto"] = Field(
        "auto", description="Layer whose MLP value projection output is the routing key; `auto`: 75% of the depth minus 2.")
    lora_layers: tuple[Layer, ...] | Literal["auto"] = Field(
        "auto", description="Layers whose MLP value projection carries the LoRA blocks; `auto`: the two after the router.")
    rank: int = Field(4, ge=1, description="Rank of each edit batch's LoRA block (`num_rank_per_block`).")
    lora_alpha: float = Field(4.0, gt=0, description="A block's update is scaled by lora_alpha / rank.")
    edit_lr: float = Field(0.01, gt=0, description="Adam learning rate for the new block.")
    n_iter: int = Field(50, ge=1, description="Most optimisation steps per edit batch.")
    lr_step: int = Field(20, ge=1, description="The learning rate halves every this many steps (StepLR, γ 0.5).")
    stop_loss: float = Field(0.01, ge=0, description="Training stops once every answer's mean NLL is below this.")
