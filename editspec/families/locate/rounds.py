"""Rounds of targets and spreading (MEMIT's and AlphaEdit's `passes`,
docs/methods/memit.md#rounds-passes).

Round 1 optimises every fact's residual target on the unedited model and spreads it over the
layers; each later round optimises the targets again on the model the earlier rounds edited
(so a fact makes up for what the batch's other edits did at its prompts) and spreads what is
still missing.  The tail KL's anchor stays the unedited model's in every round.
"""
from __future__ import annotations

from typing import Callable, Sequence

from editspec.model.deltas import AppliedDeltas, Delta
from editspec.model.layout import ModelLayout

from .requests import PreparedRequest
from .spread import Solver, revert_all, spread_over_layers
from .targets import OptimSettings, Targets, optimise_targets


def spread_in_rounds(
    model, layout: ModelLayout, prepared: Sequence[PreparedRequest], layers: Sequence[int], solve: Solver,
    settings: Sequence[OptimSettings], *, pad: int, annotate: Callable[[list[dict]], list[dict]] | None = None,
) -> tuple[list[Delta], list[AppliedDeltas], list[dict], list[Targets]]:
    """One round per entry of `settings` (the δ optimisation of that round); returns every round's
    deltas in order, the handles of the applied updates (the caller reverts them; on an error they
    are reverted here), the per-layer logs with their `round`, and each round's targets.

    `annotate`, when given, maps a round's layer logs before they are kept (memit adds the held
    weight its solve used).
    """
    block = layout.block_at(max(layers))
    deltas, handles, logs, rounds = [], [], [], []
    try:
        for round_, optim in enumerate(settings):
            targets = optimise_targets(model, [block] * len(prepared), prepared, optim, pad=pad,
                                       tail0=rounds[0].tail0 if rounds else None)
            stage, applied, stage_logs = spread_over_layers(model, layout, prepared, layers, targets.value, solve,
                                                            pad=pad)
            deltas += stage
            handles += applied
            stage_logs = annotate(stage_logs) if annotate is not None else stage_logs
            logs += [{**log, "round": round_ + 1} for log in stage_logs]
            rounds.append(targets)
    except BaseException:
        revert_all(handles)
        raise
    return deltas, handles, logs, rounds


def round_settings(config) -> list[OptimSettings]:
    """The δ settings of each of `config.passes` rounds: `config`'s own, then at `later_v_lr` (None: `v_lr`)."""
    later = config.model_copy(update={"v_lr": config.later_v_lr}) if config.later_v_lr is not None else config
    return [config.optim()] + [later.optim()] * (config.passes - 1)
