"""Settings the memory backends (grace, melo) share (torch-free, so `editspec check` validates them)."""
from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from editspec.model.chat import ChatSettings


class MemorySettings(ChatSettings):
    """What the memory backends (grace, melo) share: the deferral radius and its calibration."""

    model_config = ConfigDict(extra="forbid")

    eps: float | Literal["auto"] = Field(
        "auto", description="Deferral radius in raw activation units, or `auto`: per key, `eps_scale` times its "
        "distance to the nearest activation of reference text (keep facts and `reference_corpus`).")
    eps_scale: float = Field(0.5, gt=0, description="For `eps auto`: the fraction of the distance to the nearest reference activation.")
    reference_corpus: str | None = Field(None, description="Reference text for `eps auto`: a text or .jsonl file, or unset for the built-in Wikipedia summaries.")
    reference_samples: int = Field(16, ge=0, description="Documents of `reference_corpus` used for `eps auto`.")
    answer_end: str = Field(
        ".", description="Text trained to follow each edit's answer (its first token, at the position after the "
        "answer), so a free generation or chat reply ends the answer there instead of looping on it or running "
        "on (\"Kohn Pedersen Fox Fox Fox\"); `off` (or empty): no such key, as before.")
    mode: Literal["coverage", "moving_average"] = Field(
        "coverage", description="A new key near one with the same label: grow that key's radius to cover it, or move the key halfway.")
