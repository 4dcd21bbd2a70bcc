"""Settings of the `wise` backend (torch-free, so `editspec check` validates them without torch)."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from editspec.build.backend import Capabilities
from editspec.model.chat import ChatSettings

# A memory of edited facts: canonical and forget blocks are left out (with a warning).
CAPABILITIES = Capabilities(white_box=True, batch=True, sequential=True, reversible=True)


class WiseConfig(ChatSettings):
    """WISE (Wang et al. 2024): a side copy of one value projection, routed by how much it would change it."""

    model_config = ConfigDict(extra="forbid")

    layer: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        "auto", description="Layer whose MLP value projection gets the side memory; `auto`: 27% of the depth keyed at the "
        "subject (8 of SmolLM2's 30), 75% keyed at the answer (22 of 30).")
    key: Literal["answer", "subject"] = Field(
        "subject", description="Where the memory acts and routes: `answer`, the positions that predict the answer; "
        "`subject`, the subject's last token (as ROME keys a fact), so a rephrasing that names the subject routes "
        "and a neighbour that shares only the relation does not.")
    lr: float = Field(0.04, gt=0, description="Adam learning rate for the side memory's entries.")
    n_iter: int = Field(20, ge=1, description="Most optimisation steps per shard.")
    stop_loss: float = Field(0.05, ge=0, description="A shard stops once every answer's mean NLL is below this and the margins hold.")
    edit_margin: float = Field(
        1.0, gt=0, description="β: at an edit's key positions the activation score ‖ΔW a‖ / ‖W a‖ is trained above this.")
    keep_margin: float = Field(
        0.2, gt=0, description="α: on keep facts and reference text the activation score is trained below this.")
    margin_weight: float = Field(10.0, ge=0, description="Weight of the two margin (routing) losses beside the answers' NLL.")
    leak_cost: float = Field(
        10.0, gt=0, description="Threshold calibration: the routing threshold maximises the fraction of edit and scope "
        "positions that route minus this many times the fraction of keep and reference positions that do.")
    shards: int = Field(2, ge=1, description="Each compile splits its edits into this many shards, each trained in its own random subspace, then merged.")
    density: float = Field(0.5, gt=0, le=1, description="Fraction of the side memory's entries a shard trains (its random mask).")
    merge_density: float = Field(0.8, gt=0, le=1, description="TIES merge: each shard keeps this fraction of its largest changes before signs are elected.")
    edits_per_memory: int = Field(
        100, ge=1, description="A side memory holds at most this many edits; the next compile that would pass it starts a new one "
        "(earlier memories are then left as they are).")
    reference_corpus: str | None = Field(
        None, description="General text kept out of the memory (margin loss and threshold): a text or .jsonl file, or unset for the built-in Wikipedia summaries.")
    reference_samples: int = Field(16, ge=0, description="Documents of `reference_corpus` used per compile.")
