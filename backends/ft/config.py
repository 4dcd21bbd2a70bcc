"""Settings of the `ft` backend (torch-free, so `editspec check` validates them without torch)."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from editspec.build.backend import Capabilities
from editspec.families.training.settings import TrainingSettings

Layer = Annotated[int, Field(ge=0)]


# Trains on edits, canonical examples (with `over` as a contrast) and forget blocks.
CAPABILITIES = Capabilities(white_box=True, batch=True, sequential=True, reversible=True, canonical=True, forget=True)



class FtConfig(TrainingSettings):
    """Fine-tuning with KL to the unedited model: LoRA (peft) by default, or the MLP weights themselves."""

    method: Literal["lora", "full"] = Field(
        "lora", description="`lora`: a peft LoRA adapter on the MLPs of `layers` (artifact `adapter/`); "
        "`full`: train those MLP weights directly (artifact `delta.safetensors` of dense updates).")
    layers: tuple[Layer, ...] | Literal["auto"] = Field(
        "auto", description="Layers whose MLP is trained; `auto`: the central block from 10% to 90% of the depth (Hewitt et al.).")
    modules: Literal["mlp", "mlp_out"] = Field(
        "mlp", description="`mlp`: every linear projection of the MLP; `mlp_out`: only its value (down) projection.")
    rank: int = Field(8, ge=1, description="LoRA rank.")
    lora_alpha: float = Field(8.0, gt=0, description="LoRA scaling numerator (the update is scaled by alpha / rank).")
