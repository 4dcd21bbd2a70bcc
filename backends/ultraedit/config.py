"""UltraEdit's settings (torch-free, so `editspec check` validates them without loading torch)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from editspec.build.backend import Capabilities

# Edits only: canonical and forget blocks get a warning at their line.
CAPABILITIES = Capabilities(white_box=True, batch=True, sequential=True, reversible=True)


class UltraEditConfig(BaseModel):
    """UltraEdit (Gu et al. 2025) settings; defaults are [heuristic] values for SmolLM2-135M (docs/methods/ultraedit.md)."""

    model_config = ConfigDict(extra="forbid")

    layers: tuple[int, ...] = Field(
        (10, 11, 12, 13, 14), description="Edited layers (their MLP value projections); every one gets its own "
        "closed-form update from the same forward-backward pass.")
    step: float = Field(
        1.0, gt=0, description="η: the value shift at each key is −η × the lifelong-normalised gradient of the "
        "answer's NLL there (in units of the gradient's running per-feature RMS).")
    ridge: float = Field(
        1.0, gt=0, description="λ of the ridge solve, as a multiple of the mean squared norm of the normalised keys: "
        "larger keeps the update smaller and nearer the edited keys, smaller fits them more exactly.")
    passes: int = Field(
        1, ge=1, le=8, description="Forward-backward passes per compile; each pass solves again on the model with "
        "the earlier passes applied (1 is UltraEdit's one-step update).")
    preserve_keep: bool = Field(
        True, description="Put the keep facts' keys in the solve with a zero value shift, so their outputs stay.")
    batch_size: int = Field(32, ge=1, description="Texts per forward-backward batch (memory, not results).")

    @field_validator("layers")
    @classmethod
    def _sorted_unique(cls, layers):
        if not layers or sorted(set(layers)) != list(layers) or layers[0] < 0:
            raise ValueError("layers must be a non-empty increasing list of layer indices (0 or more) without repeats")
        return layers
