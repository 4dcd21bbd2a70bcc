"""Settings of the `sense` backend (torch-free, so `editspec check` validates them without torch)."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from editspec.families.training.settings import TrainingSettings
from editspec.build.backend import Capabilities

Layer = Annotated[int, Field(ge=0)]


# Trains on edits, canonical examples and forget blocks, like ft.
CAPABILITIES = Capabilities(white_box=True, batch=True, sequential=True, reversible=True, canonical=True, forget=True)


class SenseConfig(TrainingSettings):
    """Sense fine-tuning (Hewitt et al. 2024): train only the few vectors each example relies on.

    On a Backpack model: additive changes to the top-k sense vectors of each target.  On an
    ordinary transformer: additive changes to the top-k MLP value vectors (columns of the
    value projection) by attribution, activation × gradient at the answer positions.
    """

    senses: int = Field(8, ge=1, description="Vectors chosen per target: Backpack senses, or MLP value vectors.")
    background_weight: float = Field(
        1000.0, ge=0, description="Backpack: λ, the weight of a sense's mean contextualization weight on background (anchor) text, subtracted from its importance.")
    layers: tuple[Layer, ...] | Literal["auto"] = Field(
        "auto", description="Transformers: layers whose MLP value vectors may be chosen; `auto`: 10% to 90% of the depth.")
