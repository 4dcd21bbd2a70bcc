"""Settings shared by the methods that optimise residual targets δ (MEMIT, AlphaEdit).

Kept free of torch so that `editspec check` can validate backend settings quickly.
"""
from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from editspec.model.chat import ChatSettings




def _increasing_layers(layers: tuple[int, ...]) -> tuple[int, ...]:
    if not layers or sorted(set(layers)) != list(layers) or layers[0] < 0:
        raise ValueError("layers must be a non-empty increasing list of layer indices (0 or more) without repeats")
    return layers


# The layers a multi-layer method edits: increasing, no repeats (memit, alphaedit, ultraedit).
LayerList = Annotated[tuple[int, ...], AfterValidator(_increasing_layers)]


class StatisticsSettings(BaseModel):
    """Where the second-moment statistics C = E[kkᵀ] of a locate-then-edit backend come from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mom2_samples: int = Field(
        2000, ge=1, description="Corpus documents for the second-moment statistics C; computed once per model, "
        "layer, corpus and count, then cached (`editspec stats list`).")
    mom2_corpus: str | None = Field(
        None, description="A text or .jsonl file of documents for C; none means the packaged Wikipedia summaries.")


class KeepReplySettings(BaseModel):
    """How much of a keep question's chat exchange the methods that hold keep facts hold (rome, memit)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    keep_reply_tokens: int = Field(
        0, ge=0, le=256, description="With `preserve_keep` and chat on: also hold the greedy chat reply to each keep "
        "question of the model this compile starts from (the unedited one; with --on, the one earlier stages edited), "
        "its first n tokens read after the user turn, so the edited model's reply to what the spec keeps stays the "
        "reply it was (verify's chat locality compares the two); 0: the question's turn only "
        "(docs/methods/locate.md#keep-facts-held).")
    keep_reply_weight: float = Field(
        1.0, gt=0, le=1, description="With `keep_reply_tokens`: the share of `keep_weight` each held reply position "
        "counts; the reply's many positions at the full weight crowd the edits out of the solve "
        "(docs/methods/locate.md#keep-facts-held).")


class ResidualTargetSettings(StatisticsSettings, ChatSettings):
    """How the target vectors δ are optimised; a backend config adds its own solve settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mom2_chat: float = Field(
        0.3, ge=0, le=1, description="With chat on (`chat auto` and a chat template), the share of C taken from the "
        "same documents written as chat exchanges (first sentence the user's turn, the rest the reply), so the "
        "update also stays small at the keys of chat text; 0: raw text only (docs/methods/locate.md#chat-form-statistics-mom2_chat).")
    v_lr: float = Field(0.5, gt=0, description="Adam learning rate for the residual target δ.")
    v_num_grad_steps: int = Field(25, ge=1, description="Most optimisation iterations for δ (the last only evaluates).")
    v_weight_decay: float = Field(1e-3, ge=0, description="Weight of ‖δ‖/‖h_init‖² in the loss.")
    clamp_norm_factor: float = Field(4.0, gt=0, description="δ is kept within this multiple of ‖h^L_init‖.")
    kl_factor: float = Field(0.0625, ge=0, description="Weight of the KL term on the `{subject} is a` prompt.")
    tail_kl: float = Field(
        0.3, ge=0, description="Weight of a KL term at the position right after each row's whole answer, against what "
        "the unedited model says there: the edited model goes on after the new answer as the unedited one would, "
        "instead of repeating it (\"Yemen , Yemen , Yemen\"); higher holds δ back from the answer too; 0: off "
        "(docs/methods/locate.md#optimising-the-targets-δ).")
    tail_tokens: int = Field(
        1, ge=1, le=8, description="Positions the tail KL covers: the one right after the answer, then one after each "
        "token of the unedited model's own greedy continuation there, up to this many in all (the tail KL is their "
        "mean), so the edited model also goes on as the unedited one did a few tokens later; 1: the first position "
        "only (docs/methods/locate.md#optimising-the-targets-δ).")
    stop_loss: float = Field(0.05, ge=0, description="A fact stops optimising once its loss is below this.")
    stop_prob: float = Field(
        0.9, gt=0, le=1, description="A fact also stops once its target's mean token probability reaches this (1: never); "
        "lower is faster but leaves a smaller margin over the old object (docs/benchmarks.md).")
    answer_end: str = Field(
        ".", description="Text the chat rows also train after the answer (\"Rome.\"), so the chat reply ends the "
        "answer there instead of looping on it (\"Image Universe Image Universe\"); `off` (or empty): the answer "
        "alone. An answer that already ends a sentence gets nothing more (docs/methods/locate.md).")
    context_template_counts: tuple[tuple[int, int], ...] = Field(
        ((5, 10),), description="Context templates as (count, max tokens) pairs; the bare prompt is a group of its own.")
    template_seed: int = Field(0, description="Seed for sampling context templates from the unedited model.")
    straggler_steps: int = Field(
        0, ge=0, description="Extra δ iterations, within `straggler_clamp_factor`, for the facts that met neither stop "
        "criterion in `v_num_grad_steps` (0: none); the others are not rerun, so typical edits cost the same.")
    straggler_clamp_factor: float = Field(
        8.0, gt=0, description="δ's norm limit (a multiple of ‖h^L_init‖) during the straggler iterations.")
    bf16_steps: bool = Field(
        False, description="Run δ's steps after the first in bfloat16 autocast where the device computes bfloat16 "
        "natively (CPUs with AVX512-BF16 or AMX, CUDA GPUs; float32 elsewhere). Faster, but it raises peak memory and "
        "makes the artifact depend on the device (docs/benchmarks.md).")
    facts_per_batch: int = Field(
        4, ge=1, description="Facts whose δ are optimised together in one batch; peak memory grows with it "
        "(docs/benchmarks.md).")

    def optim(self):
        """The δ-optimisation settings (an `editspec.families.locate.OptimSettings`)."""
        from editspec.families.locate.targets import OptimSettings

        return OptimSettings(self.v_lr, self.v_num_grad_steps, self.kl_factor, self.v_weight_decay,
                             self.clamp_norm_factor, self.stop_loss, self.facts_per_batch,
                             stop_prob=self.stop_prob, straggler_steps=self.straggler_steps,
                             straggler_clamp_factor=self.straggler_clamp_factor, bf16_steps=self.bf16_steps,
                             tail_kl=self.tail_kl, tail_tokens=self.tail_tokens)


class RoundSettings(ResidualTargetSettings):
    """Settings of the methods that spread targets over layers in rounds (MEMIT, AlphaEdit)."""

    passes: int = Field(
        2, ge=1, description="Rounds of targets and solve: each later round optimises every fact's δ again on the model "
        "the earlier rounds edited, so a fact makes up for what the batch's other edits did to its prompts (in chat "
        "above all); each round costs another target pass and adds its deltas to the payload; 1 is the papers' single "
        "round (docs/methods/memit.md#rounds-passes).")
    later_v_lr: float | None = Field(
        0.25, gt=0, description="Adam learning rate for δ in the rounds after the first (`passes`); None: `v_lr`. "
        "A later round only corrects what the earlier ones left short, and Adam's first step moves every coordinate "
        "by about the rate (a step of norm rate·√d whatever the gradient), so the first round's rate overshoots there "
        "(docs/methods/memit.md#rounds-passes).")
