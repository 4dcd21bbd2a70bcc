"""UltraEdit's settings (torch-free, so `editspec check` validates them without loading torch)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from editspec.build.backend import Capabilities
from editspec.families.locate.target_settings import LayerList, StatisticsSettings
from editspec.model.chat import ChatSettings

# Edits only: canonical and forget blocks get a warning at their line.

CAPABILITIES = Capabilities(white_box=True, batch=True, sequential=True, reversible=True)


class UltraEditConfig(StatisticsSettings, ChatSettings):
    """UltraEdit (Gu et al. 2025) settings; defaults are [heuristic] values for SmolLM2-135M (docs/methods/ultraedit.md)."""

    model_config = ConfigDict(extra="forbid", frozen=False)

    layers: LayerList = Field(
        (10, 11, 12, 13, 14), description="Edited layers (their MLP value projections); every one gets its own "
        "closed-form update from the same forward-backward pass.")
    step: float = Field(
        3.0, gt=0, description="η: the value shift at each key is −η × the lifelong-normalised gradient of the "
        "answer's NLL there (in units of the gradient's running per-feature RMS); 1.0 suits `mom2_weight` 0.")
    ridge: float = Field(
        0.1, gt=0, description="λ of the ridge solve, as a multiple of the mean squared norm of the normalised keys: "
        "larger keeps the update smaller and nearer the edited keys, smaller fits them more exactly.")
    prior_rows: int = Field(
        1000, ge=0, description="Lifelong normalisation: each feature's running RMS is shrunk toward the mean over "
        "features as if this many rows had shown it, so a feature few edits touched is not scaled up.")
    passes: int = Field(
        2, ge=1, le=8, description="Forward-backward passes per compile; each pass solves again on the model with "
        "the earlier passes applied (1 is UltraEdit's one-step update, at half the cost).")
    preserve_keep: bool = Field(
        True, description="Put the keep facts' keys in the solve with a zero value shift, so their outputs stay.")
    preserve_corpus: str | None = Field(
        None, description="General text whose keys the solve maps to nothing (with the keep facts): a text or .jsonl "
        "file, or unset for the built-in Wikipedia summaries.")
    preserve_docs: int = Field(16, ge=0, description="Documents of `preserve_corpus` per compile (0: keep facts only).")
    preserve_tokens: int = Field(64, ge=1, description="Tokens of each preserved document whose keys enter the solve.")
    mom2_samples: int = Field(
        500, ge=1, description="Corpus documents for the key statistics C (about 50k tokens: C is [1536, 1536] on "
        "SmolLM2); computed once per model, layer, corpus and count, then cached (`editspec stats list`).")
    mom2_weight: float = Field(
        30000.0, ge=0, description="How many tokens of general text the unedited model's key statistics C = E[kkᵀ] "
        "stand for in the solve (MEMIT's preservation term): the update moves the edit keys at the least cost to "
        "general text.  0: the paper's ridge in normalised key space (`ridge`) instead.")
    context_rows: bool = Field(
        True, description="Also solve at the prompt positions before the answer (the subject's among them) with "
        "their own one-step value shifts, as the paper's all-token keys do; positions whose context texts of "
        "two edits share (a chat template's system turn) are left out.")
    keep_weight: float = Field(
        100.0, gt=0, description="Weight of each preserved key (keep facts, `preserve_docs` text) in the "
        "solve with `mom2_weight`, against one token of the statistics.")
    history_weight: float = Field(
        1.0, ge=0, description="With `mom2_weight`: weight of every earlier `--on` turn's edit keys in the solve, "
        "pinned at their present outputs (1.0: each counts as much as one of this turn's keys, so a chain solves "
        "least squares over all its edits).  The artifact then carries their [d_k, d_k] sum per layer.  0: each "
        "turn is held only against general text and its own keep facts.")
    batch_size: int = Field(32, ge=1, description="Texts per forward-backward batch (memory, not results).")

