"""What the training backends (ft, sense) share: objectives and KL anchors in, a training log out.

`prepare()` sees the unedited model (before a previous artifact is attached), so the KL
reference and the preserve-budget baseline are always those of the original model, also
for `--on`.  A subclass chooses the parameters to train and writes its payload.

    class Mine(TrainingBackend):
        def default_lr(self, config): return 1e-3
        def compile(self, job):
            log = self.run_training(job, params)       # params: what to train
            ...
"""
from __future__ import annotations

import contextlib
from collections import defaultdict
from typing import Any, Iterator, Sequence

from editspec.build.backend import Backend, CompileJob
from editspec.model.chat import chat_enabled
from editspec.families.training.objectives import Objectives, rehearsal, spec_objectives, split_preserve


class TrainingBackend(Backend):
    """Base of the backends that train on `editspec.families.training.objectives` with the `editspec.families.training.tuning` loop."""

    def default_lr(self, config) -> float:
        """The learning rate when the config sets none."""
        return 1e-3

    def objectives(self, job: CompileJob) -> Objectives:
        """Edits (and, on a first compile, canonical examples and forget blocks) as objectives.

        A sequential compile also rehearses `config.rehearse` of the earlier edits; with the
        `chat` setting on, edits are trained in chat form too."""
        first = job.previous is None
        rehearsed = [] if first else rehearsal(job.spec, job.edits, job.config.rehearse, job.seed)
        return spec_objectives(job.spec, job.edits, scope=job.config.scope, whole_spec=first, rehearsed=rehearsed,
                               chat=chat_enabled(job.model.tokenizer, job.config.chat))

    def prepare(self, job: CompileJob) -> dict[str, Any]:
        from editspec.families.training.tuning import chat_anchors, reference_anchors, unedited_text_reference

        loaded, config = job.model, job.config
        objectives = self.objectives(job)
        anchored, watched = split_preserve(objectives.preserve, config.budget_holdout)
        general = []
        if config.kl_samples and config.kl_weight > 0:
            from editspec.model.corpus import load_corpus

            general = load_corpus(config.kl_corpus).sample(config.kl_samples)
        # The keep facts of what is trained now come first; earlier edits' keep facts last.  Trained
        # in chat form, the keep facts are anchored in chat form too (their questions as user turns,
        # the unedited model's replies), each beside its raw text.
        own, held = list(objectives.anchors), list(objectives.held)
        if objectives.chat_anchors or objectives.held_chat:
            job.progress(f"unedited chat replies to {len(objectives.chat_anchors) + len(objectives.held_chat)} keep question(s)")
            own = _alternate(own, chat_anchors(loaded.model, loaded.tokenizer, objectives.chat_anchors, limit=32))
            held = _alternate(held, chat_anchors(loaded.model, loaded.tokenizer, objectives.held_chat, limit=16))
        groups = [own, anchored, general, held]
        job.progress(f"KL reference on {sum(map(len, groups))} anchor text(s)")
        anchors = reference_anchors(loaded.model, loaded.tokenizer, groups)
        budget = unedited_text_reference(loaded.model, loaded.tokenizer, watched, objectives.budget)
        if budget is not None:
            job.progress(f"preserve budget watched on {len(watched)} of {len(objectives.preserve)} preserve text(s)")
        return {"objectives": objectives, "anchors": anchors, "budget": budget, "watched": watched}

    def run_training(self, job: CompileJob, model, params: Sequence) -> dict:
        """Train `params` of `model` (the base, or a wrapper around it) on the prepared objectives."""
        from editspec.families.training.tuning import budget_monitor, encode_targets, train

        objectives: Objectives = job.prepared["objectives"]
        tokenizer = job.model.tokenizer
        encoded = encode_targets(tokenizer, objectives.targets)
        monitor = budget_monitor(model, tokenizer, job.prepared["watched"], objectives.budget, job.prepared["budget"])
        settings = job.config.training(job.seed, self.default_lr(job.config))
        job.progress(f"training on {len(encoded)} target(s) for at most {settings.steps} steps")
        with only_trainable(job.model.model, params):
            return train(model, tokenizer, params, encoded, job.prepared["anchors"], settings,
                         over_budget=monitor, progress=job.progress)

    def edit_logs(self, job: CompileJob, log: dict) -> list[dict]:
        """Per edit: its final objective loss (mean over its prompts) and the steps taken."""
        objectives: Objectives = job.prepared["objectives"]
        losses: dict[str, list[float]] = defaultdict(list)
        for target, loss in zip(objectives.targets, log.get("per_target", [])):
            losses[target.source].append(loss)
        return [{"id": edit.id, "loss": round(sum(losses[edit.id]) / max(len(losses[edit.id]), 1), 6),
                 "steps": log["steps"]} for edit in job.edits]

    def details(self, job: CompileJob, log: dict) -> dict:
        """The training log for the manifest (without per-target numbers, which are per edit)."""
        objectives: Objectives = job.prepared["objectives"]
        kinds = defaultdict(int)
        for target in objectives.targets:
            kinds[target.kind] += 1
        return {"training": {k: v for k, v in log.items() if k != "per_target"},
                "objectives": dict(sorted(kinds.items())), "trained": dict(sorted(objectives.sources.items())),
                "anchors": len(job.prepared["anchors"]) if job.prepared["anchors"] is not None else 0,
                "budget_watched": len(job.prepared["watched"]) if job.prepared["budget"] is not None else 0}


def _alternate(first: Sequence, second: Sequence) -> list:
    """One of each in turn while both last, then the rest: [a0, b0, a1, b1, a2, ...]."""
    merged = [x for pair in zip(first, second) for x in pair]
    shorter = min(len(first), len(second))
    return merged + list(first[shorter:]) + list(second[shorter:])


@contextlib.contextmanager
def only_trainable(model, params: Sequence) -> Iterator[None]:
    """Gradients only for `params` inside the block; every `requires_grad` flag is restored after."""
    chosen = {id(p) for p in params}
    saved = [(p, p.requires_grad) for p in model.parameters()]
    extra = [(p, p.requires_grad) for p in params if id(p) not in {id(q) for q, _ in saved}]
    try:
        for p, _ in saved:
            p.requires_grad_(id(p) in chosen)
        for p, _ in extra:
            p.requires_grad_(True)
        yield
    finally:
        for p, flag in saved + extra:
            p.requires_grad_(flag)
