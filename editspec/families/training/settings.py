"""Settings every training backend (ft, sense) shares (torch-free, so `editspec check` validates them)."""
from __future__ import annotations

import math

from pydantic import ConfigDict, Field

from editspec.model.chat import ChatMode, ChatSettings


class TrainingSettings(ChatSettings):
    """Settings every training backend (ft, sense) shares: steps, learning rate, the KL term."""

    model_config = ConfigDict(extra="forbid")

    # The one place a family departs from ChatSettings' default: trained in chat form, ft moved
    # its keep facts (two-fact capitals spec: locality 0/3 under auto, 3/3 under off), and still
    # does with the keep questions anchored in chat form too (docs/benchmarks.md, "Edits made for chat").
    chat: ChatMode = Field(
        "off", description="`auto`: also train each edit as the reply to its questions (else its prompt) asked "
        "as a user turn, and anchor each keep fact's questions the same way (the unedited model's reply), when "
        "the tokenizer has a chat template; `off` (the default for training backends): raw prompts only. "
        "Under `auto` keep facts can still move.")

    lr: float | None = Field(None, gt=0, description="Adam learning rate; unset: the backend's default for its method.")
    steps: int = Field(40, ge=1, description="Most optimisation steps (each scores every target once).")
    stop_loss: float = Field(0.05, ge=0, description="Training stops once the summed objective loss is below this.")
    kl_weight: float = Field(0.5, ge=0, description="Weight of KL(p_unedited ‖ p_edited), summed over anchor positions (Hewitt et al. draw 0.1-1).")
    kl_batch: int = Field(8, ge=1, description="Anchor windows (keep facts, hard negatives, preserve and general text) per step's KL term.")
    kl_corpus: str | None = Field(None, description="General text for the KL term: a text or .jsonl file, or unset for the built-in Wikipedia summaries.")
    kl_samples: int = Field(8, ge=0, description="Documents of `kl_corpus` added to the anchors (0: only the spec's own keep and preserve text).")
    scope: bool = Field(False, description="Also train on each edit's `scope` prompts (they are then no longer held out by `verify`).")
    budget_every: int = Field(10, ge=1, description="Steps between checks of the `preserve` budget; past it, the last parameters within it are kept.")
    budget_holdout: float = Field(
        0.5, ge=0, lt=1, description="Share of the `preserve` texts kept out of the KL anchors and watched only by the budget "
        "check, so it measures text the trainer was not pulled towards (needs two texts or more; 0: every preserve text is both).")
    rehearse: int = Field(
        8, ge=0, description="In a sequential compile (`--on`), also train on up to this many of the spec's earlier edits, "
        "drawn by the seed, so the adapter does not forget them while it learns the new ones (0: only the new edits).")
    grad_clip: float = Field(1.0, gt=0, description="Gradients are clipped to this global norm.")
    forget_p: float = Field(0.01, gt=0, lt=1, description="A `forget` string is trained until its probability after each prompt is below this (verify's limit is 0.05).")

    def training(self, seed: int, default_lr: float):
        """The loop settings (an `editspec.families.training.tuning.TrainSettings`)."""
        from editspec.families.training.tuning import TrainSettings

        return TrainSettings(lr=self.lr or default_lr, steps=self.steps, kl_weight=self.kl_weight,
                             kl_batch=self.kl_batch, stop_loss=self.stop_loss, grad_clip=self.grad_clip,
                             budget_every=self.budget_every, seed=seed,
                             forget_logp=math.log(self.forget_p))
