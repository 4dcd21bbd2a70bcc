"""Settings shared by the black-box backends `ike` and `retrieval` (torch-free, for `check`)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class PluginConfig(BaseModel):
    """What every black-box plugin lets a user set.  Defaults were tuned on CounterFact (docs/methods/plugin.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    template: str | None = Field(
        None, description="Path of a Jinja2 prompt template to use instead of the default; facts reach it "
        "only as variables (see the README's \"API models\" section).")
    threshold: float | None = Field(
        None, description="Router threshold τ on (cosine similarity + mention bonus); unset: calibrated from "
        "the spec's scope prompts and paraphrases against its keep constraints.")
    default_threshold: float = Field(
        0.75, ge=-1, le=3, description="τ when the spec has too little to calibrate on (no paraphrases or no keep).")
    mention_bonus: float = Field(
        0.5, ge=0, le=2, description="Added to an edit's score when the request names the edit's subject.")
    top_k: int = Field(3, ge=1, description="Most edits whose facts go into one request.")
