"""UltraEdit's settings (torch-free, so `editspec check` validates them without loading torch)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from editspec.build.backend import Capabilities
from editspec.families.locate.target_settings import LayerList
from editspec.model.chat import ChatSettings

# Edits only: canonical and forget blocks get a warning at their line.
CAPABILITIES = Capabilities(white_box=True, batch=True, sequential=True, reversible=True)


class UltraEditConfig(ChatSettings):
    """UltraEdit (Gu et al. 2025) settings; defaults are [heuristic] values for SmolLM2-135M (docs/methods/ultraedit.md)."""

    model_config = ConfigDict(extra="forbid")

    layers: LayerList = Field(
        (10, 11, 12, 13, 14), description="Edited layers (their MLP value projections); every one gets its own "
        "closed-form update from the same forward-backward pass.")
    step: float = Field(
        1.0, gt=0, description="η: the value shift at each key is −η × the lifelong-normalised gradient of the "
        "answer's NLL there (in units of the gradient's running per-feature RMS).")
    ridge: float = Field(
        0.1, gt=0, description="λ of the ridge solve, as a multiple of the mean squared norm of the normalised keys: "
        "larger keeps the update smaller and nearer the edited keys, smaller fits them more exactly.")
    prior_rows: int = Field(
        1000, ge=0, description="Lifelong normalisation: each feature's running RMS is shrunk toward the mean over "
        "features as if this many rows had shown it, so a feature few edits touched is not scaled up.")
    passes: int = Field(
        1, ge=1, le=8, description="Forward-backward passes per compile; each pass solves again on the model with "
        "the earlier passes applied (1 is UltraEdit's one-step update).")
    preserve_keep: bool = Field(
        True, description="Put the keep facts' keys in the solve with a zero value shift, so their outputs stay.")
    preserve_corpus: str | None = Field(
        None, description="General text whose keys the solve maps to nothing (with the keep facts): a text or .jsonl "
        "file, or unset for the built-in Wikipedia summaries.")
    preserve_docs: int = Field(16, ge=0, description="Documents of `preserve_corpus` per compile (0: keep facts only).")
    preserve_tokens: int = Field(64, ge=1, description="Tokens of each preserved document whose keys enter the solve.")
    batch_size: int = Field(32, ge=1, description="Texts per forward-backward batch (memory, not results).")

